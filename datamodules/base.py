"""Shared plumbing of the datamodules.

* :class:`GANDataModule`: the base every datamodule derives from. GAN modules evaluate through metric
  callbacks, not validation steps, so ``val_dataloader``/``test_dataloader`` return one tiny dummy batch:
  Lightning's loops run and the callbacks fire. Training loaders are resumable (:func:`stateful_loader`):
  Lightning saves their position with every checkpoint, so a run resumed mid-epoch draws the batches the
  uninterrupted run would have drawn.
* Image sources: a folder (recursive) or an NVIDIA-style dataset zip, listed as sorted relative POSIX
  names, read as bytes, hashed with streaming sha256.
* Few-shot subsets: :func:`fewshot_order` (sorted names, then a seeded permutation) and manifest files
  (:func:`read_manifest` / :func:`write_manifest`: one relative name per line, ``#`` comments).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler as StatefulRandomSampler
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from datamodules.transforms import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

# torchdata's StatefulDataLoader calls a deprecated torch function on construction; nothing to act on.
warnings.filterwarnings("ignore", message=r"'set_vital' is deprecated", category=UserWarning)


def log_info(msg: str, *args) -> None:
    """``logging`` at INFO level on global rank zero only (docs/architecture.md, "Conventions")."""
    if rank_zero_only.rank == 0:
        log.info(msg, *args)


class UInt8ImageDataset(Dataset):
    """uint8 images ``[N, 3, H, W]`` served as float ``[3, H, W]`` in [-1, 1].

    With ``xflip`` the dataset has ``2N`` items and item ``i >= N`` is image ``i - N`` mirrored
    (NVIDIA's ``--mirror`` doubling), so flips follow the loader's seeded shuffle.
    """

    def __init__(self, images: torch.Tensor, xflip: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images, self.xflip = images, xflip

    def __len__(self) -> int:
        return len(self.images) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.images)
        x = self.images[index % n].to(torch.float32).div_(127.5).sub_(1.0)
        return x.flip(-1) if index >= n else x


def dummy_eval_loader() -> DataLoader:
    """One batch holding one zero tensor: lets validate/test loops run so metric callbacks fire."""
    return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)


def stateful_loader(dataset: Dataset, batch_size: int, seed: int, drop_last: bool = True, num_workers: int = 0,
                    rank: int = 0, world: int = 1) -> StatefulDataLoader:
    """A shuffled, resumable ``StatefulDataLoader`` over ``dataset`` (one shard per rank when ``world > 1``)."""
    common = dict(batch_size=batch_size, drop_last=drop_last, num_workers=num_workers,
                  persistent_workers=num_workers > 0)
    if world > 1:
        sampler = StatefulDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=int(seed))
    else:
        sampler = StatefulRandomSampler(dataset, generator=torch.Generator().manual_seed(int(seed)))
    # The shuffle owns its generator: a generator shared with the loader would also give the workers' base
    # seed, drawn after each epoch's permutation, and a restored sampler would then miss that draw.
    return StatefulDataLoader(dataset, sampler=sampler, generator=torch.Generator().manual_seed(int(seed)),
                              **common)


class GANDataModule(pl.LightningDataModule):
    """Base datamodule: dummy eval loaders, rank/world helpers and the few-shot manifest."""

    def __init__(self) -> None:
        super().__init__()
        #: Names of the training images (few-shot subset or manifest); the launcher records them.
        self.manifest_names: list[str] = []
        self._is_setup = False

    def _ensure_setup(self) -> None:
        if not self._is_setup:
            self.setup("fit")

    def val_dataloader(self) -> DataLoader:
        return dummy_eval_loader()

    def test_dataloader(self) -> DataLoader:
        return dummy_eval_loader()

    def rank_and_world(self) -> tuple[int, int]:
        """``(global_rank, world_size)`` from the attached trainer, else torch.distributed, else (0, 1)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def train_loader(self, dataset: Dataset, batch_size: int, seed: int, drop_last: bool = True,
                     num_workers: int = 0) -> DataLoader:
        """Shuffled training loader seeded by ``seed`` whose position Lightning saves in every checkpoint.

        It is a torchdata ``StatefulDataLoader``: Lightning stores its ``state_dict`` (the shuffle's generator
        state and the number of samples served this epoch, including those prefetched by workers) with the
        fit loop, and a resumed run continues the epoch with the next batch the interrupted run would have
        drawn. Under DDP the loader brings its own stateful ``DistributedSampler`` (seeded by ``seed``; the
        Trainer sets its epoch), so Lightning does not replace it by a stateless one. A dataset smaller than
        one batch per process is an error.
        """
        rank, world = self.rank_and_world()
        if drop_last and len(dataset) // world < batch_size:
            raise ValueError(
                f"the training set has {len(dataset)} items ({len(self.manifest_names)} images"
                f"{', x2 for xflip' if getattr(dataset, 'xflip', False) else ''}) for {world} process(es), "
                f"fewer than batch_size={batch_size} per process; lower batch_size or set drop_last=False")
        return stateful_loader(dataset, batch_size, seed, drop_last, num_workers, rank, world)

    def save_manifest(self, path: str | os.PathLike) -> Path:
        """Write :attr:`manifest_names` as a manifest file that ``manifest=`` reads back exactly."""
        self._ensure_setup()
        return write_manifest(path, self.manifest_names, header=self.manifest_header())

    def manifest_header(self) -> str:
        return f"{type(self).__name__}: {len(self.manifest_names)} training images"


# --------------------------------------------------------------------------------------------------
# Few-shot subsets and manifest files


def fewshot_order(names: list[str], seed: int) -> list[str]:
    """``names`` sorted, then permuted by ``numpy.random.RandomState(seed)``; take a prefix for N shots.

    Prefixes are nested: the 5-shot subset of a seed is contained in its 10-shot subset.
    """
    ordered = sorted(names)
    perm = np.random.RandomState(int(seed) % 2**32).permutation(len(ordered))
    return [ordered[i] for i in perm]


def check_subset_args(fewshot: int | None, manifest: str | None, max_images: int | None) -> None:
    """Validate the subset options shared by the image and toy datamodules."""
    for key, value in (("fewshot", fewshot), ("max_images", max_images)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{key} must be a positive int or None, got {value!r}")
    if fewshot is not None and manifest is not None:
        raise ValueError("fewshot and manifest both select the training images; set only one of them")


def _normalize_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_manifest(path: str | os.PathLike) -> list[str]:
    """Names listed in a manifest file (blank lines and ``#`` comments ignored); errors are explicit."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest file {p} does not exist (expected a text file with one "
                                f"image name per line, relative to the dataset root)")
    names = [_normalize_name(line) for line in p.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"manifest file {p} lists no image names")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"manifest file {p} lists names more than once: {dupes[:5]}")
    return names


def write_manifest(path: str | os.PathLike, names: Iterable[str], header: str | None = None) -> Path:
    """Write ``names`` one per line (with an optional ``#`` header line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {header}"] if header else []
    lines += list(names)
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------------
# Image sources: a folder or an NVIDIA-style dataset zip


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def _is_image_name(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS) and not _is_hidden(rel)


def _streaming_sha256(fp: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: fp.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


class ImageSource:
    """A set of image files addressed by relative POSIX names (sorted by :meth:`names`)."""

    location: Path

    def names(self) -> list[str]:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        with self.open(name) as fp:
            return fp.read()

    def sha256(self, name: str) -> str:
        with self.open(name) as fp:
            return _streaming_sha256(fp)


class FolderSource(ImageSource):
    """Image files under a folder, found recursively; hidden files and folders are skipped."""

    def __init__(self, root: Path) -> None:
        self.location = root

    def names(self) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.location, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.location).as_posix()
            for f in filenames:
                rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                if _is_image_name(rel):
                    found.append(rel)
        return sorted(found)

    def open(self, name: str) -> BinaryIO:
        return open(self.location / name, "rb")


class ZipSource(ImageSource):
    """Images inside a zip (NVIDIA ``dataset_tool.py`` layout); ``dataset.json`` labels are ignored.

    The zip handle is opened lazily per process, so the source can be sent to DataLoader workers.
    """

    def __init__(self, path: Path) -> None:
        self.location = path
        self._zip: zipfile.ZipFile | None = None
        self._pid: int | None = None
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.namelist()
                self._labels = None
                if "dataset.json" in members:
                    self._labels = json.loads(zf.read("dataset.json")).get("labels")
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path} is not a readable zip file ({exc}); expected a folder of images "
                             f"or a dataset zip") from exc
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"dataset.json in {path} is not a JSON object ({exc})") from exc
        self._names = sorted(m for m in members if not m.endswith("/") and _is_image_name(m))
        if self._labels:
            rank_zero_warn(f"{path}: dataset.json holds class labels; conditional training is not "
                           f"supported, the labels are ignored")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"], state["_pid"] = None, None
        return state

    def _file(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.location), os.getpid()
        return self._zip

    def names(self) -> list[str]:
        return list(self._names)

    def open(self, name: str) -> BinaryIO:
        return self._file().open(name, "r")


def open_image_source(path: str | os.PathLike) -> ImageSource:
    """A :class:`FolderSource` or :class:`ZipSource` for ``path``, or a clear error."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset path {p} does not exist (expected a folder of images or a "
                                f"dataset .zip)")
    if p.is_dir():
        return FolderSource(p)
    if p.suffix.lower() == ".zip":
        return ZipSource(p)
    raise ValueError(f"dataset path {p} is a file but not a .zip; expected a folder of images "
                     f"({', '.join(IMAGE_EXTENSIONS)}) or a dataset .zip")
