"""Image folders and dataset zips as a LightningDataModule (few-shot subsets: docs/methods/mixdl.md,
"Options").

Pipeline (all in :meth:`ImageDataModule.setup`):

1. list the image files of a folder (recursive) or an NVIDIA-style zip, sorted by relative name;
2. choose the training images: all of them, ``fewshot=N`` (sorted names, seeded permutation, the first N
   *readable* files of it), or exactly the names of a ``manifest`` file; ``max_images`` caps the count;
3. check them: when the training set fits in :data:`IN_MEMORY_MAX_BYTES` as uint8 (a few thousand images
   at 256 px) every image is decoded once and kept in memory; otherwise only headers are read now and
   images are decoded in ``__getitem__``;
4. unreadable files (corrupt, truncated, not an image) are skipped with ONE
   :class:`UnreadableImageWarning` that counts them and names up to five; a summary log line counts the
   colour conversions and crops (recipe in :mod:`datamodules.transforms`).

Training batches are float ``[B, 3, H, W]`` in [-1, 1]. With ``xflip=True`` every image appears twice per
epoch, once mirrored (NVIDIA's ``--mirror`` dataset doubling): the flips are a deterministic function of
the index, so the DataLoader's seeded shuffle (``seed``) fixes both the order and the flips.

``reference_set("train"|"full")`` exposes the preprocessed, unflipped images to the metrics; its
``content_hash`` identifies the content (sha256 over sorted ``(relative name, file sha256)`` pairs, the
preprocessing description and ``which``), so a folder and a zip holding the same files hash the same, and
editing any file changes it.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from datamodules.base import (GANDataModule, ImageSource, check_subset_args, fewshot_order,
                              log_info, open_image_source, read_manifest)
from datamodules.transforms import (IMAGE_EXTENSIONS, DecodeNote, UnreadableImage, check_options,
                                    decode_image, preprocessing_description, probe_image)
from metrics.reference import ReferenceSet

#: Training sets up to this many bytes (uint8, after resizing) are decoded once and kept in memory.
IN_MEMORY_MAX_BYTES = 1 << 30
#: Scans shorter than this show no progress bar.
_PROGRESS_MIN = 256


class UnreadableImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped."""


def _describe_bad(bad: Sequence[tuple[str, str]], location: Path) -> str:
    shown = "; ".join(f"{name} ({reason})" for name, reason in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"{len(bad)} unreadable image file(s) in {location}: {shown}{more}"


class _CheckDataset(Dataset):
    """Decodes (or only probes the header of) each name; used to scan files with DataLoader workers."""

    def __init__(self, source: ImageSource, names: Sequence[str], decode: bool, options: dict) -> None:
        self.source, self.names, self.decode, self.options = source, list(names), decode, options

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        name = self.names[i]
        try:
            if self.decode:
                arr, note = decode_image(self.source.read(name), name, **self.options)
                return name, arr, note, None
            with self.source.open(name) as fp:
                w, h = probe_image(fp)
            if self.options["crop"] == "none" and w != h:
                raise ValueError(f"{name} is {w}x{h} but crop='none' needs square images; "
                                 f"use crop='center' or crop the files beforehand")
            return name, None, None, None
        except UnreadableImage as exc:
            return name, None, None, str(exc)
        except OSError as exc:  # the file itself could not be read (permissions, I/O error)
            return name, None, None, f"{type(exc).__name__}: {exc}"


class ImageStore:
    """Preprocessed uint8 ``[3, R, R]`` images by name: decoded once and cached, or decoded per access."""

    def __init__(self, source: ImageSource, options: dict, num_workers: int = 0) -> None:
        self.source, self.options, self.num_workers = source, options, num_workers
        self.cache: dict[str, np.ndarray] = {}
        self.notes: dict[str, DecodeNote] = {}
        self.readable: set[str] = set()
        self.unreadable: dict[str, str] = {}
        self._sha256: dict[str, str] = {}

    def _check(self, names: Sequence[str], decode: bool, desc: str) -> None:
        todo = [n for n in names if n not in self.unreadable
                and (n not in self.readable or (decode and n not in self.cache))]
        if not todo:
            return
        loader = DataLoader(_CheckDataset(self.source, todo, decode, self.options), batch_size=16,
                            num_workers=self.num_workers, collate_fn=list)
        disable = rank_zero_only.rank != 0 or len(todo) < _PROGRESS_MIN
        with tqdm(total=len(todo), desc=desc, unit="img", disable=disable, leave=False) as bar:
            for batch in loader:
                for name, arr, note, error in batch:
                    if error is not None:
                        self.unreadable[name] = error
                        continue
                    self.readable.add(name)
                    if arr is not None:
                        self.cache[name], self.notes[name] = arr, note
                bar.update(len(batch))

    def take_readable(self, order: Sequence[str], count: int, decode: bool,
                      desc: str = "scan images") -> tuple[list[str], list[tuple[str, str]]]:
        """The first ``count`` readable names of ``order``, and the ``(name, reason)`` skipped on the way."""
        chosen: list[str] = []
        bad: list[tuple[str, str]] = []
        pos = 0
        while len(chosen) < count and pos < len(order):
            chunk = list(order[pos:pos + count - len(chosen)])
            pos += len(chunk)
            self._check(chunk, decode, desc)
            for name in chunk:
                if name in self.unreadable:
                    bad.append((name, self.unreadable[name]))
                else:
                    chosen.append(name)
        return chosen, bad

    def get(self, name: str) -> np.ndarray:
        """The preprocessed image (raises :class:`UnreadableImage` if a lazily decoded file is corrupt)."""
        arr = self.cache.get(name)
        if arr is None:
            arr, _ = decode_image(self.source.read(name), name, **self.options)
        return arr

    def sha256(self, name: str) -> str:
        if name not in self._sha256:
            self._sha256[name] = self.source.sha256(name)
        return self._sha256[name]


def to_signed_float(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> float32 in [-1, 1]."""
    return torch.from_numpy(arr).to(torch.float32).div_(127.5).sub_(1.0)


class ImageDataset(Dataset):
    """Training view: float ``[3, R, R]`` in [-1, 1]; with ``xflip`` index ``i >= n`` is image ``i - n`` mirrored.

    A lazily decoded file that turns out to be corrupt is skipped with a warning (the next image is used).
    """

    def __init__(self, store: ImageStore, names: Sequence[str], xflip: bool) -> None:
        self.store, self.names, self.xflip = store, list(names), xflip

    def __len__(self) -> int:
        return len(self.names) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.names)
        i, flip = index % n, index >= n
        for attempt in range(n):
            name = self.names[(i + attempt) % n]
            try:
                x = to_signed_float(self.store.get(name))
                return x.flip(-1) if flip else x
            except UnreadableImage as exc:
                warnings.warn(f"skipping unreadable image {name} ({exc})", UnreadableImageWarning, stacklevel=2)
        raise RuntimeError(f"none of the {n} training images in {self.store.source.location} could be decoded")


class _ReferenceDataset(Dataset):
    def __init__(self, store: ImageStore, names: Sequence[str]) -> None:
        self.store, self.names = store, list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        name = self.names[i]
        try:
            return torch.from_numpy(self.store.get(name))
        except UnreadableImage as exc:
            raise RuntimeError(f"reference image {name} in {self.store.source.location} passed the header "
                               f"check but cannot be decoded ({exc}); remove or replace the file") from exc


class ImageDataModule(GANDataModule):
    """A folder of images or a dataset zip, resized to ``resolution`` (see the module docstring).

    Args:
        path: folder (searched recursively for ``.png .jpg .jpeg .webp .bmp``) or dataset ``.zip``.
        resolution: output size in pixels (square).
        batch_size: per-process batch size of the training loader.
        num_workers: DataLoader workers for training, scanning and reference batches.
        xflip: add mirrored copies of every image (x-flip augmentation).
        resize_filter: PIL filter: ``"lanczos"``, ``"bicubic"``, ``"bilinear"`` or ``"box"``.
        crop: ``"center"`` (largest centred square of non-square images) or ``"none"`` (non-square
            images are an error).
        max_images: cap on the number of training images.
        fewshot: train on N images chosen by ``fewshot_seed`` (sorted names, seeded permutation).
        fewshot_seed: seed of the few-shot choice.
        manifest: text file naming the training images, one relative name per line.
        drop_last: drop the last incomplete batch (a dataset smaller than a batch is then an error).
        seed: seed of the training loader's shuffle.
        reference_max_images: cap (first N sorted readable names) on the ``"full"`` reference set.
        holdout: hold out the last N files (sorted names) from training and from the ``"full"`` set: they
            form the ``"holdout"`` reference set (test images of an inversion method, e.g. the last 5,000
            of FFHQ's 70,000).
    """

    def __init__(self, path: str, resolution: int, batch_size: int = 4, num_workers: int = 0,
                 xflip: bool = True, resize_filter: str = "lanczos", crop: str = "center",
                 max_images: int | None = None, fewshot: int | None = None, fewshot_seed: int = 0,
                 manifest: str | None = None, drop_last: bool = True, seed: int = 0,
                 reference_max_images: int | None = None, holdout: int = 0) -> None:
        super().__init__()
        if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 0:
            raise ValueError(f"holdout must be an integer >= 0, got {holdout!r}")
        self.holdout = holdout
        self._holdout_names: list[str] = []
        check_options(resolution, resize_filter, crop)
        check_subset_args(fewshot, manifest, max_images)
        check_subset_args(None, None, reference_max_images)
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.save_hyperparameters(logger=False)  # the run config is logged by train.py; avoids key clashes
        self.path, self.resolution, self.batch_size, self.num_workers = path, resolution, batch_size, num_workers
        self.xflip, self.resize_filter, self.crop, self.max_images = xflip, resize_filter, crop, max_images
        self.fewshot, self.fewshot_seed, self.manifest = fewshot, fewshot_seed, manifest
        self.drop_last, self.seed, self.reference_max_images = drop_last, seed, reference_max_images
        #: The preprocessing recipe; part of every reference set's ``content_hash``.
        self.preprocessing = preprocessing_description(resolution, resize_filter, crop)
        self.store: ImageStore | None = None
        self.in_memory = False
        self._all_names: list[str] = []
        self._full_names: list[str] | None = None
        self._train: ImageDataset | None = None

    # ---------------------------------------------------------------------------------- setup

    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        source = open_image_source(self.path)
        self._all_names = source.names()
        if not self._all_names:
            raise ValueError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found in {source.location}")
        if self.holdout:
            if self.holdout >= len(self._all_names):
                raise ValueError(f"holdout={self.holdout} leaves no training image: {source.location} holds "
                                 f"{len(self._all_names)} image files")
            self._all_names, self._holdout_names = (self._all_names[:-self.holdout],
                                                    self._all_names[-self.holdout:])
        options = {"resolution": self.resolution, "resize_filter": self.resize_filter, "crop": self.crop}
        self.store = ImageStore(source, options, self.num_workers)

        order, count = self._selection_order(source)
        if self.max_images is not None:
            count = min(count, self.max_images)
        self.in_memory = count * 3 * self.resolution ** 2 <= IN_MEMORY_MAX_BYTES
        chosen, bad = self.store.take_readable(order, count, decode=self.in_memory, desc="load images")
        if self.manifest is not None and bad:
            raise ValueError(f"manifest {self.manifest} names unreadable files: "
                             + _describe_bad(bad, source.location))
        if bad:
            rank_zero_warn("skipped " + _describe_bad(bad, source.location), category=UnreadableImageWarning)
        if not chosen:
            raise ValueError(f"no readable image among the {len(self._all_names)} image files in "
                             f"{source.location}")
        if self.fewshot is not None and len(chosen) < count:
            raise ValueError(f"fewshot={self.fewshot} but only {len(chosen)} readable images in {source.location}")
        self.manifest_names = sorted(chosen)
        self._train = ImageDataset(self.store, self.manifest_names, self.xflip)
        self._is_setup = True
        self._log_summary(len(bad))

    def _selection_order(self, source: ImageSource) -> tuple[list[str], int]:
        if self.manifest is not None:
            names = read_manifest(self.manifest)
            held = set(self._holdout_names).intersection(names)
            if held:
                raise ValueError(f"manifest {self.manifest} names {len(held)} held-out file(s) "
                                 f"(data.holdout={self.holdout}): {sorted(held)[:5]}")
            known = set(self._all_names)
            missing = [n for n in names if n not in known]
            if missing:
                raise FileNotFoundError(
                    f"manifest {self.manifest} names {len(missing)} file(s) that are not image files of "
                    f"{source.location}: {missing[:5]}")
            return names, len(names)
        if self.fewshot is not None:
            if self.fewshot > len(self._all_names):
                raise ValueError(f"fewshot={self.fewshot} but {source.location} holds only "
                                 f"{len(self._all_names)} image files")
            return fewshot_order(self._all_names, self.fewshot_seed), self.fewshot
        return self._all_names, len(self._all_names)

    def _log_summary(self, n_bad: int) -> None:
        names = self.manifest_names
        parts = [f"{len(names)} training images from {self.store.source.location} "
                 f"({len(self._all_names)} files) at {self.resolution}px, {self.resize_filter} filter, "
                 f"crop={self.crop}, {'in memory' if self.in_memory else 'decoded lazily'}"]
        notes = [self.store.notes[n] for n in names if n in self.store.notes]
        conv = Counter(n.converted for n in notes if n.converted)
        if conv:
            parts.append("converted to RGB: " + ", ".join(f"{v} {k}" for k, v in sorted(conv.items()))
                         + " (alpha composited on white)" * ("alpha" in conv or "palette" in conv))
        cropped, upsampled = sum(n.cropped for n in notes), sum(n.upsampled for n in notes)
        if cropped:
            parts.append(f"{cropped} non-square center-cropped")
        if upsampled:
            parts.append(f"{upsampled} upsampled")
        if n_bad:
            parts.append(f"{n_bad} unreadable skipped")
        log_info("ImageDataModule: %s", "; ".join(parts))

    def manifest_header(self) -> str:
        how = (f"fewshot={self.fewshot} fewshot_seed={self.fewshot_seed}" if self.fewshot is not None
               else f"manifest={self.manifest}" if self.manifest is not None else "all images")
        return f"{len(self.manifest_names)} training images of {self.path} ({how})"

    # ---------------------------------------------------------------------------------- loaders

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self.train_loader(self._train, self.batch_size, self.seed, self.drop_last, self.num_workers)

    # ---------------------------------------------------------------------------------- metrics

    def reference_set(self, which: str = "full") -> ReferenceSet:
        """Preprocessed, unflipped uint8 images for metrics: ``"train"`` (the chosen subset), ``"full"`` (all
        files but the held-out ones) or ``"holdout"`` (the held-out files, see ``holdout``)."""
        self._ensure_setup()
        if which == "train":
            names = self.manifest_names
        elif which == "full":
            names = self._full_reference_names()
        elif which == "holdout":
            names = self._holdout_reference_names()
        else:
            raise ValueError(f"which={which!r}: expected 'full', 'train' or 'holdout'")
        store = self.store

        def batches(batch_size: int) -> Iterator[torch.Tensor]:
            yield from DataLoader(_ReferenceDataset(store, names), batch_size=batch_size,
                                  num_workers=self.num_workers)

        return ReferenceSet(
            name=f"{Path(self.path).name}:{which}", content_hash=self._content_hash(names, which),
            length=len(names), batches_fn=batches, resolution=self.resolution, xflip=False,
            info={"path": str(self.path), "which": which, "preprocessing": dict(self.preprocessing),
                  "num_files": len(self._all_names)})

    def _holdout_reference_names(self) -> list[str]:
        if not self._holdout_names:
            raise ValueError("no held-out images: set data.holdout to the number of files to hold out")
        if not hasattr(self, "_holdout_readable"):
            decode = len(self._holdout_names) * 3 * self.resolution ** 2 <= IN_MEMORY_MAX_BYTES
            names, bad = self.store.take_readable(self._holdout_names, len(self._holdout_names), decode,
                                                  desc="held-out images")
            if bad:
                rank_zero_warn("held-out set: skipped " + _describe_bad(bad, self.store.source.location),
                               category=UnreadableImageWarning)
            self._holdout_readable = names
        return self._holdout_readable

    def _full_reference_names(self) -> list[str]:
        if self._full_names is None:
            count = len(self._all_names)
            if self.reference_max_images is not None:
                count = min(count, self.reference_max_images)
            decode = count * 3 * self.resolution ** 2 <= IN_MEMORY_MAX_BYTES
            names, bad = self.store.take_readable(self._all_names, count, decode, desc="reference images")
            if bad:
                rank_zero_warn("reference set: skipped " + _describe_bad(bad, self.store.source.location),
                               category=UnreadableImageWarning)
            self._full_names = names
        return self._full_names

    def _content_hash(self, names: Sequence[str], which: str) -> str:
        """sha256 over the preprocessing description, ``which`` and sorted (name, file sha256) pairs."""
        h = hashlib.sha256(json.dumps({"which": which, "preprocessing": self.preprocessing},
                                      sort_keys=True).encode())
        disable = rank_zero_only.rank != 0 or len(names) < _PROGRESS_MIN
        for name in tqdm(sorted(names), desc="hash files", unit="file", disable=disable, leave=False):
            h.update(f"{name}\0{self.store.sha256(name)}\n".encode())
        return h.hexdigest()


__all__ = ["ImageDataModule", "ImageDataset", "ImageStore", "UnreadableImageWarning", "IN_MEMORY_MAX_BYTES"]
