"""Domain Expansion's latent geometry (Nitzan et al., "Domain Expansion of Image Generators", CVPR 2023;
docs/methods/expansion.md).

* :func:`sefa_basis`: the semantic basis of a generator's W space (SeFa, Shen & Zhou 2021): the right singular
  vectors of the stacked style-affine weights of every modulated conv and of the first ToRGB, ordered by
  decreasing singular value. The last columns are the *dormant* directions: moving along them barely changes
  the images.
* :class:`ExpansionBasis`: the basis, the repurposed dimensions ``R`` and the mean W ``w̄``, with the
  projections (in W, one vector per sample)::

      base(w)     = V_B V_Bᵀ w + V_R V_Rᵀ w̄         the repurposed coordinates of w replaced by the mean's
      edit_d(w)   = base(w) + s_d · v_d               domain d: its coordinate moved by s_d

* :func:`assign_dimensions`: explicit dimensions first, the others counted down from the last (most dormant)
  index; duplicates and out-of-range indices are errors.
* :func:`dormancy`: how much a step of ``s`` along a direction changes the images, relative to the spread of
  the generator's samples (a property of the parent generator, reported before repurposing).
* :func:`expansion_table`: the expansion table of a loaded file: our exports' ``expansion`` entry, or the
  official Domain Expansion snapshots' ``latent_basis`` / ``repurposed_dims`` / ``subspace_distance`` /
  ``expansion_cfg`` (NVIDIA pickles read by ``models.checkpoints.load``), with the domains named from the
  task config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["style_affine_weights", "sefa_basis", "assign_dimensions", "ExpansionBasis", "dormancy",
           "expansion_table", "OFFICIAL_KEYS"]


def style_affine_weights(generator: nn.Module) -> list[Tensor]:
    """The style-affine weights ``A_l`` [C_l, style_dim] of ``conv1``, ``to_rgb1`` and every ``convs[i]``, raw
    (the uniform runtime gain of the equalized layers does not change the singular vectors)."""
    layers = [generator.conv1.conv, generator.to_rgb1.conv, *(c.conv for c in generator.convs)]
    return [layer.modulation.weight.detach() for layer in layers]


@torch.no_grad()
def sefa_basis(generator: nn.Module) -> Tensor:
    """V [style_dim, style_dim]: orthonormal columns, by decreasing singular value of ``[A_1; ...; A_L]``.

    Column signs are not unique (an SVD's choice); compare bases up to sign.
    """
    stacked = torch.cat([w.double() for w in style_affine_weights(generator)], dim=0)
    _, _, vh = torch.linalg.svd(stacked, full_matrices=True)
    return vh.T.float().contiguous()


def assign_dimensions(requested: Sequence[int | None], style_dim: int) -> list[int]:
    """A dimension per task: explicit ones reserved first, the others the largest free indices counting down."""
    explicit = [d for d in requested if d is not None]
    for d in explicit:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < style_dim:
            raise ValueError(f"task dimension {d!r} is out of range: W has {style_dim} dimensions (0..{style_dim - 1})")
    duplicates = sorted({d for d in explicit if explicit.count(d) > 1})
    if duplicates:
        raise ValueError(f"task dimension(s) {duplicates} are used by more than one task")
    free = [d for d in range(style_dim - 1, -1, -1) if d not in set(explicit)]
    if len(requested) > style_dim:
        raise ValueError(f"{len(requested)} tasks but W has only {style_dim} dimensions")
    out, it = [], iter(free)
    for d in requested:
        out.append(d if d is not None else next(it))
    return out


@dataclass
class ExpansionBasis:
    """The basis ``V`` [D, D], the repurposed dimensions, their step sizes ``s`` and the mean W ``w̄`` [D]."""

    basis: Tensor
    dims: list[int]
    distances: list[float]
    w_mean: Tensor

    def __post_init__(self) -> None:
        d = self.basis.shape[0]
        if self.basis.shape != (d, d):
            raise ValueError(f"the basis must be square [style_dim, style_dim], got {tuple(self.basis.shape)}")
        if len(self.distances) != len(self.dims):
            raise ValueError("one step size per repurposed dimension")
        assign_dimensions(list(self.dims), d)  # validates range and duplicates

    @property
    def repurposed(self) -> Tensor:
        """V_R [D, |R|]."""
        return self.basis[:, list(self.dims)]

    def base(self, w: Tensor) -> Tensor:
        """``V_B V_Bᵀ w + V_R V_Rᵀ w̄`` = ``w - V_R V_Rᵀ (w - w̄)`` for W [B, D] (or W+ [B, L, D] row-wise)."""
        v_r = self.repurposed.to(w)
        return w - (w - self.w_mean.to(w)) @ v_r @ v_r.T

    def direction(self, index: int) -> Tensor:
        """``v_d`` [D] of repurposed dimension number ``index`` (its position in :attr:`dims`)."""
        return self.basis[:, self.dims[index]]

    def edit(self, w: Tensor, index: int | Tensor, scale: float = 1.0) -> Tensor:
        """``base(w) + scale · s_d · v_d``; ``index`` may be a tensor [B] of per-sample domain numbers."""
        base = self.base(w)
        if isinstance(index, Tensor):
            steps = torch.tensor(self.distances, device=w.device, dtype=w.dtype)[index] * scale
            dirs = self.repurposed.to(w).T[index]  # [B, D]
            shape = (-1,) + (1,) * (w.dim() - 2) + (w.shape[-1],)
            return base + (steps[:, None] * dirs).reshape(shape)
        return base + scale * self.distances[index] * self.direction(index).to(w)

    def compose(self, w: Tensor, indices: Sequence[int], scales: Sequence[float] | None = None) -> Tensor:
        """``base(w) + Σ_i scale_i · s_i · v_i`` (two or more domains at once)."""
        out = self.base(w)
        for i, index in enumerate(indices):
            out = out + (1.0 if scales is None else scales[i]) * self.distances[index] * self.direction(index).to(w)
        return out

    def state(self) -> dict:
        """Plain data for checkpoints and exports."""
        return {"basis": self.basis.detach().cpu(), "dims": list(map(int, self.dims)),
                "distances": [float(s) for s in self.distances], "w_mean": self.w_mean.detach().cpu()}

    @classmethod
    def from_state(cls, state: dict) -> "ExpansionBasis":
        return cls(torch.as_tensor(state["basis"]).float(), [int(d) for d in state["dims"]],
                   [float(s) for s in state["distances"]], torch.as_tensor(state["w_mean"]).float())


@torch.no_grad()
def dormancy(generator: nn.Module, basis: Tensor, dims: Sequence[int], distance: float, n: int = 64,
             seed: int = 0, w_mean: Tensor | None = None) -> dict[int, float]:
    """For each dimension: ``mean ||G(w + s v_d) - G(w)||² / mean ||G(w) - mean_w G(w)||²`` over ``n`` seeded
    samples (stored noise): the image change of the step relative to the spread of the samples (0 = dormant)."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    w = generator.style(z)

    def render(codes: Tensor) -> Tensor:
        return generator([codes], input_is_latent=True, randomize_noise=False)[0]

    images = render(w)
    spread = (images - images.mean(0, keepdim=True)).pow(2).flatten(1).sum(1).mean()
    out = {}
    for d in dims:
        moved = render(w + distance * basis[:, d].to(w))
        out[int(d)] = float((moved - images).pow(2).flatten(1).sum(1).mean() / spread)
    return out


#: the entries an official Domain Expansion snapshot adds to an NVIDIA network pickle
OFFICIAL_KEYS = ("latent_basis", "repurposed_dims", "subspace_distance")


def expansion_table(extra: Mapping[str, Any], latent_avg: Tensor | None = None) -> dict | None:
    """The expansion table (``basis``, ``dims``, ``distances``, ``w_mean``, ``names``) of a loaded file, or None.

    ``extra`` is ``models.checkpoints.load(...).extra``. Our exports carry the table as ``expansion``. An
    official snapshot stores ``latent_basis`` [D, D], ``repurposed_dims`` (in task order), one
    ``subspace_distance`` and the parsed ``expansion_cfg``; its w̄ is the mapping's ``w_avg`` (``latent_avg``,
    as the official ``generate_aligned.py`` uses). Domains are named after their task: a NADA task by its
    ``target_text``, a MyStyle task by its ``person_name`` (spaces become ``_``), else ``dim<d>``.
    Raises ValueError for a table that is present but inconsistent.
    """
    table = extra.get("expansion")
    if isinstance(table, Mapping) and "basis" in table:
        return dict(table)
    present = [k for k in OFFICIAL_KEYS if k in extra]
    if not present:
        return None
    if len(present) < len(OFFICIAL_KEYS):
        missing = sorted(set(OFFICIAL_KEYS) - set(present))
        raise ValueError(f"an official Domain Expansion snapshot needs {', '.join(OFFICIAL_KEYS)}; {missing} missing")
    basis = torch.as_tensor(extra["latent_basis"]).float()
    dims = [int(d) for d in torch.as_tensor(extra["repurposed_dims"]).flatten().tolist()]
    distance = extra["subspace_distance"]
    if isinstance(distance, bool) or not isinstance(distance, (int, float, Tensor)):
        raise ValueError(f"subspace_distance must be a number, got {type(distance).__name__}")
    if latent_avg is None:
        raise ValueError("the snapshot's G_ema has no mapping.w_avg (the mean W of its projections)")
    w_mean = torch.as_tensor(latent_avg).float().reshape(-1)
    if basis.shape != (w_mean.numel(), w_mean.numel()):
        raise ValueError(f"latent_basis has shape {tuple(basis.shape)}, the mapping's W has {w_mean.numel()} "
                         f"dimensions")
    names = _official_names(extra.get("expansion_cfg"), dims)
    out = {"basis": basis, "dims": dims, "distances": [float(distance)] * len(dims), "w_mean": w_mean, "names": names}
    ExpansionBasis.from_state(out)  # validates shapes, ranges and duplicates
    return out


def _official_names(cfg: Any, dims: Sequence[int]) -> list[str]:
    """Domain names from an official ``expansion_cfg`` (its tasks carry their dimension once parsed)."""
    by_dim: dict[int, str] = {}
    tasks = cfg.get("tasks", []) if isinstance(cfg, Mapping) else []
    for task in tasks if isinstance(tasks, (list, tuple)) else []:
        if not isinstance(task, Mapping) or task.get("dimension") is None:
            continue
        args = task.get("args") if isinstance(task.get("args"), Mapping) else {}
        label = args.get("target_text") or args.get("person_name")
        if isinstance(label, str) and label.strip():
            by_dim[int(task["dimension"])] = re.sub(r"\s+", "_", label.strip())
    names = [by_dim.get(d, f"dim{d}") for d in dims]
    return [n if names.count(n) == 1 else f"{n}_dim{d}" for n, d in zip(names, dims)]
