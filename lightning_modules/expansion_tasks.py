"""Domain Expansion's adaptation tasks, one repurposed latent dimension each (docs/methods/expansion.md).

A task gives the latents of its expansion samples and a loss that is a **sum** over them::

    sample_w(n, module) -> W [n, style_dim]        the expansion samples' own codes (replay uses them too)
    loss(x_base, x_edit, rows, module) -> scalar    x_base = G(base(w)) (detached), x_edit = G(edit_d(w))

Every entry may set ``dimension``, ``distance`` and ``weight``. Types (``type`` in the YAML list ``model.tasks``):

* ``text``: StyleGAN-NADA's directional CLIP loss from ``source_text`` to ``target_text``
  (``Σ_m weight_m Σ_i [1 - cos(ΔI_i, ΔT)]``, ΔI from the detached base image to the edited image, the 79
  templates); latents are mapped fresh z.
* ``image``: the same loss toward the CLIP direction of a few ``target_images`` (a folder).
* ``reconstruction`` (MyStyle): ``Σ_i LPIPS(x_edit_i, y_i) + l2_weight · mean (x_edit_i - y_i)^2`` for a person's
  aligned ``images`` and their W ``anchors`` (``<stem>.pt`` files of ``[style_dim]``, or ``[1, n_latent,
  style_dim]`` with equal rows).
* ``adversarial`` (few-shot): a domain from a small set of ``images`` (e.g. 10) instead of a text. The task
  has a discriminator head of its own, ``h_d`` (D's last conv and linear layers, without minibatch stddev),
  on the shared trunk of D (its residual blocks); with DiffAugment ``T`` (``augment``) on everything it sees::

      G (in G_expand):   Σ_i softplus(-h_d(T(x_edit_i)))
      D (in D_main):     mean softplus(h_d(T(G(edit_d(w))))) + mean softplus(-h_d(T(y)))   fresh w, ``batch`` each
      D_reg:             lazy R1 of h_d at the target images y

  The images are resized to the generator's resolution.
* ``color`` / ``flip``: small differentiable toy tasks for offline runs and tests: move the mean colour of the
  edited images to ``color``; make the edited image the mirror of the base image.

Adding a task type is one small class registered in :data:`TASKS`.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from losses.adversarial import d_logistic_loss
from losses.clip import directional_loss, image_guided_direction

__all__ = ["ExpansionTask", "TextTask", "ImageTask", "ReconstructionTask", "AdversarialTask", "ColorTask",
           "FlipTask", "TASKS", "build_tasks"]


class ExpansionTask(nn.Module):
    """One domain: ``name``, the requested ``dimension`` (None: assigned), its step size ``distance`` (None:
    the module's) and the ``weight`` of its loss in the expansion term (1; balances tasks of different scales)."""

    kind = "task"
    fresh_latents = True  # latents are mapped fresh z (False: the task's own anchors)
    #: the task has a per-image score on any (base, domain) image pair (metrics: ``domain_leakage``)
    scorable = True

    def __init__(self, name: str, dimension: int | None = None, distance: float | None = None,
                 weight: float = 1.0):
        super().__init__()
        if not float(weight) >= 0:
            raise ValueError(f"task {name!r}: weight must be >= 0, got {weight}")
        self.name, self.dimension, self.distance, self.weight = str(name), dimension, distance, float(weight)

    def sample_w(self, n: int, module) -> Tensor:
        """W [n, style_dim] of ``n`` fresh z mapped by the (frozen) mapping."""
        z = torch.randn(n, module.z_dim, device=module.device, generator=module.rng)
        with torch.no_grad():
            return module.generator.style(z)

    def loss(self, x_base: Tensor, x_edit: Tensor, rows: Tensor, module) -> Tensor:
        raise NotImplementedError

    @property
    def prompt(self) -> tuple[str, str] | None:
        """``(source_text, target_text)`` of a domain described by text (CLIP metrics), else None."""
        return None

    def score(self, x_base: Tensor, x_edit: Tensor, module) -> Tensor:
        """Per-pair task score [B] (lower = more of the domain): the loss of each pair on its own."""
        rows = torch.zeros(1, dtype=torch.long, device=x_edit.device)
        return torch.stack([self.loss(x_base[i:i + 1], x_edit[i:i + 1], rows, module).float().reshape(())
                            for i in range(x_edit.shape[0])])

    def attach(self, module) -> None:
        """Called once the module holds its networks (a task that builds modules of its own does it here)."""

    def discriminator_loss(self, module) -> tuple[Tensor, dict] | None:
        """A term of the D_main phase (None: the task trains no discriminator)."""
        return None

    def discriminator_reg(self, module) -> tuple[Tensor, dict] | None:
        """A term of the D_reg phase (None: none)."""
        return None

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dimension={self.dimension}, distance={self.distance}"


class _CLIPDirectionTask(ExpansionTask):
    """A directional CLIP loss toward ``direction(clip)`` for every CLIP model of the module."""

    def direction(self, clip, module) -> Tensor:
        raise NotImplementedError

    def loss(self, x_base: Tensor, x_edit: Tensor, rows: Tensor, module) -> Tensor:
        total = x_edit.new_zeros((), dtype=torch.float32)
        for clip, weight in zip(module.clips, module.clip_weights):
            if weight:
                src, tgt = clip.encode_images(x_base.detach()), clip.encode_images(x_edit)
                total = total + weight * directional_loss(src, tgt, self.direction(clip, module)) * x_edit.shape[0]
        return total


class TextTask(_CLIPDirectionTask):
    kind = "text"

    def __init__(self, name: str, target_text: str, source_text: str = "photo", templates: bool | Sequence[str] = True,
                 **kw: Any):
        super().__init__(name, **kw)
        self.source_text, self.target_text, self.templates = source_text, target_text, templates

    @property
    def prompt(self) -> tuple[str, str]:
        return self.source_text, self.target_text

    def direction(self, clip, module) -> Tensor:
        return clip.text_direction(self.source_text, self.target_text, self.templates)  # cached per CLIP model


class ImageTask(_CLIPDirectionTask):
    kind = "image"

    def __init__(self, name: str, target_images: str, source_samples: int = 16, **kw: Any):
        super().__init__(name, **kw)
        if not Path(target_images).is_dir():
            raise FileNotFoundError(f"task {name!r}: target_images folder {target_images} does not exist")
        self.target_images, self.source_samples = str(target_images), int(source_samples)
        self._directions: dict[int, Tensor] = {}

    def direction(self, clip, module) -> Tensor:
        key = id(clip)
        if key not in self._directions:
            with torch.no_grad():
                z = torch.randn(self.source_samples, module.z_dim, generator=torch.Generator().manual_seed(0))
                w = module.basis_state.base(module.generator.style(z.to(module.device)))
                source = module.g_frozen([w], input_is_latent=True, randomize_noise=False)[0]
            self._directions[key] = image_guided_direction(clip, source, self.target_images).to(module.device)
        return self._directions[key]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _image_files(folder: str, name: str) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"task {name!r}: folder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"task {name!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return files


def _read_image(path: Path, name: str) -> Tensor:
    """[3, H, W] in [-1, 1]; an unreadable file is a clear error naming it and the task."""
    from models.image_io import read_image

    try:
        return read_image(path)
    except ValueError as err:
        raise ValueError(f"task {name!r}: {err}") from None


def _load_person(images: str, anchors: str, name: str) -> tuple[Tensor, Tensor]:
    """Images [N, 3, H, W] in [-1, 1] and W anchors [N, D], matched by file stem."""
    anchor_dir = Path(anchors)
    if not anchor_dir.is_dir():
        raise FileNotFoundError(f"task {name!r}: folder {anchor_dir} does not exist")
    files = _image_files(images, name)
    pics, codes = [], []
    for f in files:
        anchor = anchor_dir / f"{f.stem}.pt"
        if not anchor.is_file():
            raise FileNotFoundError(f"task {name!r}: image {f.name} has no anchor {anchor}")
        code = torch.as_tensor(torch.load(anchor, map_location="cpu", weights_only=True)).float()
        if code.dim() == 3:
            code = code[0]
        if code.dim() == 2:
            if not torch.equal(code, code[:1].expand_as(code)):
                raise ValueError(f"task {name!r}: anchor {anchor} is a W+ code with different rows; a W code "
                                 f"is needed")
            code = code[0]
        codes.append(code.reshape(-1))
        pics.append(_read_image(f, name))
    return torch.stack(pics), torch.stack(codes)


class ReconstructionTask(ExpansionTask):
    """MyStyle: a person's ``images`` reconstructed from ``base(anchor) + s v_d``."""

    kind = "reconstruction"
    fresh_latents = False
    scorable = False  # its loss needs the person's anchors, not any latent

    def __init__(self, name: str, images: str, anchors: str, l2_weight: float = 1.0, **kw: Any):
        super().__init__(name, **kw)
        pics, codes = _load_person(images, anchors, name)
        self.register_buffer("images", pics, persistent=False)
        self.register_buffer("anchors", codes, persistent=False)
        self.l2_weight = float(l2_weight)
        self._rows: Tensor | None = None

    def sample_w(self, n: int, module) -> Tensor:
        """Anchors of ``n`` of the person's images drawn uniformly (their images are the loss targets)."""
        self._rows = torch.randint(len(self.anchors), (n,), device=module.device, generator=module.rng).cpu()
        return self.anchors[self._rows].to(module.device)

    def loss(self, x_base: Tensor, x_edit: Tensor, rows: Tensor, module) -> Tensor:
        target = self.images[self._rows[rows.cpu()]].to(x_edit)
        if target.shape[-2:] != x_edit.shape[-2:]:
            raise ValueError(f"task {self.name!r}: images are {tuple(target.shape[-2:])}, the generator makes "
                             f"{tuple(x_edit.shape[-2:])}: give images at the generator's resolution")
        perceptual = module.lpips_distance(x_edit, target).sum()
        l2 = (x_edit - target).pow(2).flatten(1).mean(1).sum()
        return perceptual + self.l2_weight * l2


class AdversarialTask(ExpansionTask):
    """Few-shot: the target ``images`` and a discriminator head of the task's own on D's trunk."""

    kind = "adversarial"

    def __init__(self, name: str, images: str, augment: str | None = "color,translation,cutout", batch: int = 4,
                 **kw: Any):
        super().__init__(name, **kw)
        from models.diffaugment import DiffAugment

        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"task {name!r}: batch must be a positive integer, got {batch!r}")
        self.files = _image_files(images, name)
        self.batch = batch
        self.diffaugment = DiffAugment(augment or "")
        self.head: nn.Module | None = None

    def attach(self, module) -> None:
        """Builds the head after D's last blocks and loads the images at the generator's resolution."""
        import torch.nn.functional as F

        from models.stylegan2_layers import ConvLayer, EqualLinear

        import zlib

        d = module.discriminator
        channels = d.channels[4]
        with torch.random.fork_rng(devices=[]):  # the same initial head in every run of this config
            torch.manual_seed(zlib.crc32(f"{module.seed or 0}/{self.name}".encode()))
            self.head = nn.Sequential(ConvLayer(channels, channels, 3, conv_clamp=d.conv_clamp), nn.Flatten(),
                                      EqualLinear(channels * 16, channels, activation="fused_lrelu"),
                                      EqualLinear(channels, 1))
        size = int(module.generator.size)
        pics = []
        for f in self.files:
            x = _read_image(f, self.name)[None]
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            pics.append(x[0].clamp(-1, 1))
        self.register_buffer("images", torch.stack(pics), persistent=False)

    def logits(self, x: Tensor, module) -> Tensor:
        """h_d(trunk(T(x))) [B, 1]."""
        return self.head(module.discriminator.convs(self.diffaugment(x, generator=module.rng)))

    def targets(self, module) -> Tensor:
        rows = torch.randint(len(self.images), (self.batch,), generator=module.rng, device=module.device)
        return self.images.to(module.device)[rows]

    def loss(self, x_base: Tensor, x_edit: Tensor, rows: Tensor, module) -> Tensor:
        return torch.nn.functional.softplus(-self.logits(x_edit, module).float()).sum()

    def score(self, x_base: Tensor, x_edit: Tensor, module) -> Tensor:
        """softplus(-h_d(x_edit)) per image, without augmentation."""
        return torch.nn.functional.softplus(-self.head(module.discriminator.convs(x_edit)).float()).flatten()

    def discriminator_loss(self, module) -> tuple[Tensor, dict]:
        with torch.no_grad():
            index = module.domain_index(self.name)
            w = self.sample_w(self.batch, module)
            fake = module.synth(module.generator, module.basis_state.edit(w, index))
        real_logits, fake_logits = self.logits(self.targets(module), module), self.logits(fake, module)
        loss = d_logistic_loss(real_logits.float(), fake_logits.float())
        return loss, {f"loss/D_{self.name}": loss, f"D/{self.name}_real_logits": real_logits.float().mean(),
                      f"D/{self.name}_fake_logits": fake_logits.float().mean()}

    def discriminator_reg(self, module) -> tuple[Tensor, dict]:
        loss, logs = module.lazy_r1(lambda x: self.logits(x, module), self.targets(module))
        return loss, {f"loss/D_reg_{self.name}": loss, f"reg/r1_penalty_{self.name}": logs["reg/r1_penalty"]}


class ColorTask(ExpansionTask):
    """Toy: ``Σ_i mean_c (mean_hw x_edit_i - color)^2`` (``color`` in [-1, 1] RGB)."""

    kind = "color"

    def __init__(self, name: str, color: Sequence[float] = (1.0, -1.0, -1.0), **kw: Any):
        super().__init__(name, **kw)
        self.register_buffer("color", torch.tensor([float(c) for c in color]).view(1, 3), persistent=False)

    def loss(self, x_base: Tensor, x_edit: Tensor, rows: Tensor, module) -> Tensor:
        return (x_edit.mean(dim=(2, 3)) - self.color.to(x_edit)).pow(2).mean(1).sum()


class FlipTask(ExpansionTask):
    """Toy: ``Σ_i mean (x_edit_i - mirror(x_base_i))^2``."""

    kind = "flip"

    def loss(self, x_base: Tensor, x_edit: Tensor, rows: Tensor, module) -> Tensor:
        return (x_edit - x_base.detach().flip(3)).pow(2).flatten(1).mean(1).sum()


TASKS: dict[str, type[ExpansionTask]] = {cls.kind: cls for cls in (TextTask, ImageTask, ReconstructionTask,
                                                                   AdversarialTask, ColorTask, FlipTask)}
ENTRY_KEYS = ("type", "name", "dimension", "distance", "weight")


def build_tasks(entries: Sequence[Mapping[str, Any]], shared: Mapping[str, Mapping[str, Any]] | None = None
                ) -> list[ExpansionTask]:
    """Tasks from the YAML list: ``{type, name, dimension?, distance?, **type arguments}``; ``shared`` holds
    per-type arguments given once (``task_args: {reconstruction: {l2_weight: 1.0}}``)."""
    import inspect

    if isinstance(entries, Mapping) or not entries:
        raise ValueError("model.tasks must be a non-empty list of {type, name, ...} entries")
    shared = dict(shared or {})
    unknown_types = [t for t in shared if t not in TASKS]
    if unknown_types:
        raise ValueError(f"model.task_args: unknown task type(s) {unknown_types}; types: {sorted(TASKS)}")
    tasks, names = [], set()
    for i, entry in enumerate(entries):
        entry = dict(entry)
        kind = entry.pop("type", None)
        if kind not in TASKS:
            close = difflib.get_close_matches(str(kind), list(TASKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"model.tasks[{i}].type {kind!r} is not a task type{hint}; types: {sorted(TASKS)}")
        cls = TASKS[kind]
        name = entry.get("name") or f"{kind}{i}"
        entry["name"] = name
        if name in names:
            raise ValueError(f"model.tasks[{i}]: two tasks are named {name!r}")
        names.add(name)
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "kw"}
        valid = sorted(params | set(ENTRY_KEYS) - {"type"})
        kwargs = {**shared.get(kind, {}), **entry}
        bad = [k for k in kwargs if k not in valid]
        if bad:
            hints = {k: difflib.get_close_matches(k, valid, n=1) for k in bad}
            listed = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise ValueError(f"model.tasks[{i}] ({kind}): unknown key(s) {listed}; valid keys: {valid}")
        try:
            tasks.append(cls(**kwargs))
        except TypeError as err:
            raise ValueError(f"model.tasks[{i}] ({kind}): {err}") from None
    return tasks
