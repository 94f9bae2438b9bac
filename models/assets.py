"""Offline-first registry of every pretrained file the project uses (docs/architecture.md, "Assets, offline
first"; docs/checkpoints.md, "The asset registry and the cache root").

Every file lives under one cache root, ``$STYLESHIFT_CACHE`` or ``~/.cache/styleshift``, at
``<root>/<kind>/<filename>``. :func:`resolve` never downloads: a missing file raises
:class:`AssetMissingError` at once, naming the file, where to get it, the exact path to put it at and the
``python -m models.assets fetch NAME`` command that downloads it. CLI::

    python -m models.assets list            # every asset: present / missing, size, licence, path
    python -m models.assets fetch NAME ...  # download (progress bar, sha256 check, atomic rename)
    python -m models.assets verify NAME ... # check a cached file against its known hash
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
_VERIFIED_FILE = ".verified.json"

NVIDIA_NC = "NVIDIA Source Code License-NC (non-commercial research use)"
TORCHVISION = "BSD-3-Clause (torchvision); trained on ImageNet, whose terms of access apply"


@dataclass(frozen=True)
class Asset:
    """One pretrained file. ``sha256`` is the full digest when known for sure, else None;
    ``sha256_prefix`` is a published digest prefix (torchvision embeds one in its file names)."""

    name: str
    filename: str
    url: str | None
    sha256: str | None = None
    license: str = ""
    description: str = ""
    kind: str = "misc"
    sha256_prefix: str | None = None
    instructions: str = ""

    @property
    def path(self) -> Path:
        """Where the file must be: ``cache_root() / kind / filename``."""
        return cache_root() / self.kind / self.filename


class AssetMissingError(FileNotFoundError):
    """A registered asset is not in the cache; the message says what to download and where to put it."""

    def __init__(self, asset: Asset):
        self.asset = asset
        self.path = asset.path
        source = asset.url or "no direct download"
        lines = [f"pretrained asset '{asset.name}' is missing: {asset.description}",
                 f"  file:       {asset.filename}",
                 f"  source:     {source}"]
        if asset.instructions:
            lines.append(f"  how:        {asset.instructions}")
        lines += [f"  put it at:  {asset.path}",
                  f"  or run:     python -m models.assets fetch {asset.name}"
                  + ("" if asset.url else "  (needs a URL; follow the instructions above)"),
                  f"  cache root: {cache_root()} (set $STYLESHIFT_CACHE to move it)"]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return self.args[0]


class UnknownAssetError(KeyError):
    """No asset of that name (and no such file)."""

    def __str__(self) -> str:
        return str(self.args[0])


class AssetHashError(ValueError):
    """A file's sha256 does not match the registered digest."""


class AssetDownloadError(ConnectionError):
    """``fetch`` could not download an asset (offline, HTTP error, timeout)."""


def cache_root() -> Path:
    """``$STYLESHIFT_CACHE`` or ``~/.cache/styleshift`` (read at every call)."""
    env = os.environ.get("STYLESHIFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "styleshift"


def _stylegan(name: str, filename: str, url: str, description: str, license: str = NVIDIA_NC) -> Asset:
    return Asset(name, filename, url, license=license, description=description, kind="stylegan2")


_NV = "https://nvlabs-fi-cdn.nvidia.com"
_TF_NOTE = ("NVIDIA TF pickle; models.checkpoints reads it directly without TensorFlow "
            "(`python -m models.checkpoints convert FILE OUT.pt` writes a rosinality-compatible .pt)")
_TV = "https://download.pytorch.org/models"
_HF = "https://huggingface.co/timm/{repo}/resolve/main/open_clip_pytorch_model.bin"

ASSETS: dict[str, Asset] = {a.name: a for a in [
    _stylegan("stylegan2-ffhq-1024", "ffhq.pkl", f"{_NV}/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
              "StyleGAN2 config-f FFHQ 1024 px (ADA-PyTorch pickle converted from TF; cm 2, n_mlp 8)"),
    _stylegan("stylegan2-ffhq-256", "stylegan2-ffhq-256x256.pkl",
              "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/"
              "stylegan2-ffhq-256x256.pkl",
              "StyleGAN2 FFHQ 256 px from the stylegan3 release (ADA-PyTorch pickle; config read from init_kwargs)"),
    _stylegan("stylegan2-afhqdog-512", "afhqdog.pkl", f"{_NV}/stylegan2-ada-pytorch/pretrained/afhqdog.pkl",
              "StyleGAN2-ADA AFHQ dog 512 px (paper512: cm 2, fp16 + conv_clamp 256, mbstd group 8)"),
    _stylegan("stylegan2-afhqcat-512", "afhqcat.pkl", f"{_NV}/stylegan2-ada-pytorch/pretrained/afhqcat.pkl",
              "StyleGAN2-ADA AFHQ cat 512 px (paper512: cm 2, fp16 + conv_clamp 256, mbstd group 8)"),
    _stylegan("stylegan2-church-256", "stylegan2-church-config-f.pkl",
              f"{_NV}/stylegan2/networks/stylegan2-church-config-f.pkl",
              f"StyleGAN2 config-f LSUN church 256 px; {_TF_NOTE}"),
    _stylegan("stylegan2-car-512", "stylegan2-car-config-f.pkl", f"{_NV}/stylegan2/networks/stylegan2-car-config-f.pkl",
              f"StyleGAN2 config-f LSUN car 512 px (content rows 64..447); {_TF_NOTE}"),
    _stylegan("stylegan2-horse-256", "stylegan2-horse-config-f.pkl",
              f"{_NV}/stylegan2/networks/stylegan2-horse-config-f.pkl",
              f"StyleGAN2 config-f LSUN horse 256 px; {_TF_NOTE}"),
    Asset("inception-2015-12-05", "inception-2015-12-05.pt",
          f"{_NV}/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
          license="Apache-2.0 (TensorFlow Inception-v3 2015-12-05 weights, TorchScript export by NVIDIA)",
          description="TorchScript Inception-v3 used by clean-fid / StyleGAN metrics (FID, KID)", kind="metrics"),
    Asset("lpips-alex", "alexnet-owt-7be5be79.pth", f"{_TV}/alexnet-owt-7be5be79.pth", license=TORCHVISION,
          description="torchvision AlexNet ImageNet trunk used by lpips net='alex'", kind="torchvision",
          sha256_prefix="7be5be79"),
    Asset("lpips-vgg", "vgg16-397923af.pth", f"{_TV}/vgg16-397923af.pth", license=TORCHVISION,
          description="torchvision VGG16 ImageNet trunk used by lpips net='vgg'", kind="torchvision",
          sha256_prefix="397923af"),
    Asset("lpips-squeeze", "squeezenet1_1-b8a52dc0.pth", f"{_TV}/squeezenet1_1-b8a52dc0.pth", license=TORCHVISION,
          description="torchvision SqueezeNet 1.1 ImageNet trunk used by lpips net='squeeze'", kind="torchvision",
          sha256_prefix="b8a52dc0"),
    Asset("vgg16", "vgg16-397923af.pth", f"{_TV}/vgg16-397923af.pth", license=TORCHVISION,
          description="torchvision VGG16 ImageNet weights (perceptual losses)", kind="torchvision",
          sha256_prefix="397923af"),
    Asset("vgg19", "vgg19-dcbb9e9d.pth", f"{_TV}/vgg19-dcbb9e9d.pth", license=TORCHVISION,
          description="torchvision VGG19 ImageNet weights (perceptual / style losses)", kind="torchvision",
          sha256_prefix="dcbb9e9d"),
    Asset("clip-vit-b-32-openai", "open_clip_vit_b_32_openai.bin",
          _HF.format(repo="vit_base_patch32_clip_224.openai"), license="MIT (OpenAI CLIP)",
          description="OpenAI CLIP ViT-B/32 in open_clip format (open_clip.create_model('ViT-B-32', pretrained=path))",
          kind="clip"),
    Asset("clip-vit-b-16-openai", "open_clip_vit_b_16_openai.bin",
          _HF.format(repo="vit_base_patch16_clip_224.openai"), license="MIT (OpenAI CLIP)",
          description="OpenAI CLIP ViT-B/16 in open_clip format (open_clip.create_model('ViT-B-16', pretrained=path))",
          kind="clip"),
    Asset("vgg16-caffe-idinvert", "vgg16.pth", None,
          license="CC BY 4.0 (VGG16 weights of Simonyan & Zisserman, Oxford VGG, Caffe release); PyTorch "
                  "conversion by the In-Domain GAN Inversion authors (genforce/idinvert_pytorch, MIT)",
          description="Caffe-converted VGG16 conv stack of In-Domain GAN Inversion (perceptual network F of "
                      "models.perceptual; state-dict keys layer{i}.weight/bias; expects BGR, [0, 255], "
                      "mean-subtracted input)", kind="perceptual",
          instructions="download 'Perceptual Model' (vgg16.pth) from the Pretrained Models table of the "
                       "idinvert_pytorch README (github.com/genforce/idinvert_pytorch; Google Drive file "
                       "https://drive.google.com/file/d/1qQ-r7MYZ8ZcjQQFe17eQfJbOAuE3eS0y/view) and copy it to "
                       "the path below"),
    Asset("identity-arcface-ir-se50", "model_ir_se50.pth", None,
          license="MIT (TreB1eN/InsightFace_Pytorch); trained on MS-Celeb-1M, check its terms",
          description="ArcFace IR-SE50 face-identity network (identity loss of pSp / StyleGAN-NADA)", kind="identity",
          instructions="download 'IR-SE50 Model' (model_ir_se50.pth) from the Pretrained Models table of the "
                       "pSp README (github.com/eladrich/pixel2style2pixel) and copy it to the path below"),
]}


def register(asset: Asset, overwrite: bool = False) -> Asset:
    """Add an asset to the registry (extensions, tests); an existing name needs ``overwrite=True``."""
    if asset.name in ASSETS and not overwrite and ASSETS[asset.name] != asset:
        raise ValueError(f"asset {asset.name!r} is already registered (pass overwrite=True to replace it)")
    ASSETS[asset.name] = asset
    return asset


def get(name: str) -> Asset:
    """The registered asset ``name``; unknown names raise :class:`UnknownAssetError` with close matches."""
    if name in ASSETS:
        return ASSETS[name]
    close = difflib.get_close_matches(name, list(ASSETS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownAssetError(f"unknown asset {name!r}{hint} (known: python -m models.assets list)")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or Path(text).suffix in {".pt", ".pth", ".pkl", ".bin", ".safetensors"}


def resolve(name_or_path: str | os.PathLike, verify_hash: bool = True) -> Path:
    """Local file for a registered asset name (checked against its known hash), or an existing file path.

    Never downloads. Missing asset -> :class:`AssetMissingError`; missing path -> ``FileNotFoundError``;
    unknown name -> :class:`UnknownAssetError`.
    """
    text = os.fspath(name_or_path)
    if os.path.isfile(text):
        return Path(text)
    if text not in ASSETS and _looks_like_path(text):
        raise FileNotFoundError(f"file not found: {text}")
    asset = get(text)
    if not asset.path.is_file():
        raise AssetMissingError(asset)
    if verify_hash:
        verify(asset.name)
    return asset.path


# ----------------------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _verified_cache() -> Path:
    return cache_root() / _VERIFIED_FILE


def _cached_digest(path: Path) -> str:
    """sha256 of ``path``, remembered by (size, mtime) so large files are hashed once."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns]
    store = _verified_cache()
    try:
        cache = json.loads(store.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    cache[key] = {"stamp": stamp, "sha256": digest}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, store)
    except OSError as err:  # a read-only cache still works, it just re-hashes
        log.debug("could not record verification in %s: %s", store, err)
    return digest


def _check_digest(asset: Asset, digest: str, where: Path) -> bool | None:
    if asset.sha256:
        if digest != asset.sha256.lower():
            raise AssetHashError(f"{where}: sha256 {digest} does not match {asset.sha256} registered for "
                                 f"'{asset.name}'; the file is corrupt or a different version — delete it and "
                                 f"fetch it again ({asset.url or asset.instructions})")
        return True
    if asset.sha256_prefix:
        if not digest.startswith(asset.sha256_prefix.lower()):
            raise AssetHashError(f"{where}: sha256 {digest[:16]}... does not start with {asset.sha256_prefix} "
                                 f"published for '{asset.name}'; delete it and fetch it again ({asset.url})")
        return True
    return None


def verify(name: str) -> bool | None:
    """Check the cached file of ``name`` against its registered digest (or digest prefix).

    True when it matches, None when no digest is known; a mismatch raises :class:`AssetHashError`.
    """
    asset = get(name)
    if not asset.path.is_file():
        raise AssetMissingError(asset)
    if not (asset.sha256 or asset.sha256_prefix):
        return None
    return _check_digest(asset, _cached_digest(asset.path), asset.path)


# ----------------------------------------------------------------------------------------------------------
# download


def fetch(name: str, force: bool = False, timeout: float = DEFAULT_TIMEOUT_S, progress: bool = True) -> Path:
    """Download asset ``name`` into the cache (tqdm progress, sha256 check, atomic rename); returns its path."""
    from tqdm import tqdm

    asset = get(name)
    target = asset.path
    if target.is_file() and not force:
        verify(name)
        return target
    if not asset.url:
        raise AssetDownloadError(f"'{asset.name}' has no download URL: {asset.instructions} (target: {target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{asset.filename}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    hasher = hashlib.sha256()
    try:
        request = urllib.request.Request(asset.url, headers={"User-Agent": "styleshift-assets"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=asset.filename, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
        _check_digest(asset, hasher.hexdigest(), target)
        os.replace(tmp, target)
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, AssetDownloadError):
            raise
        raise AssetDownloadError(f"could not download '{asset.name}' from {asset.url}: {err}. Without network, "
                                 f"download it elsewhere and copy it to {target}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("fetched %s -> %s", asset.name, target)
    return target


# ----------------------------------------------------------------------------------------------------------
# torch hub seeding (lpips / torchvision look for trunk weights in $TORCH_HOME/hub/checkpoints)


@contextlib.contextmanager
def torch_hub_seed(*names: str) -> Iterator[Path]:
    """Expose cached torchvision trunks to libraries that load them through ``torch.hub``.

    Inside the context ``$TORCH_HOME`` points at a private folder under the cache root whose
    ``hub/checkpoints`` holds links to the named assets (e.g. ``lpips-alex``), so ``lpips.LPIPS(net='alex')``
    or ``torchvision.models.vgg16(weights=...)`` load them without a download. Yields the checkpoints folder.
    """
    import torch.hub

    names = names or ("lpips-alex", "lpips-vgg", "lpips-squeeze", "vgg16", "vgg19")
    files = [resolve(n) for n in names]  # missing -> AssetMissingError before anything changes
    home = cache_root() / "torch_home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name, src in zip(names, files):
        link = checkpoints / get(name).filename
        if link.is_symlink() or link.exists():
            if link.resolve() == src.resolve():
                continue
            link.unlink()
        try:
            link.symlink_to(src.resolve())
        except OSError:
            shutil.copyfile(src, link)
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    try:
        if Path(torch.hub.get_dir()) != home / "hub":
            raise RuntimeError(f"torch.hub.set_dir() pinned the hub folder to {torch.hub.get_dir()}; "
                               "torch_hub_seed cannot redirect it")
        yield checkpoints
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous


# ----------------------------------------------------------------------------------------------------------
# CLI


#: approximate download sizes in MB (10**6 bytes) of the registered files, shown by ``list`` before a fetch
APPROX_SIZE_MB: dict[str, float] = {
    "stylegan2-ffhq-1024": 382, "stylegan2-ffhq-256": 290, "stylegan2-afhqdog-512": 350,
    "stylegan2-afhqcat-512": 350, "stylegan2-church-256": 330, "stylegan2-car-512": 350,
    "stylegan2-horse-256": 330, "inception-2015-12-05": 96, "lpips-alex": 244, "lpips-vgg": 553,
    "lpips-squeeze": 5, "vgg16": 553, "vgg19": 575, "clip-vit-b-32-openai": 605, "clip-vit-b-16-openai": 599,
    "vgg16-caffe-idinvert": 59, "identity-arcface-ir-se50": 175,
}


def format_size(n_bytes: float) -> str:
    """``553 MB``, ``4.97 MB``, ``12 kB`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n_bytes)} B"


def asset_size(asset: Asset) -> str:
    """The file's size when it is in the cache, else ``~`` and the registered download size (``?``: unknown)."""
    if asset.path.is_file():
        return format_size(asset.path.stat().st_size)
    approx = APPROX_SIZE_MB.get(asset.name)
    return f"~{format_size(approx * 1e6)}" if approx is not None else "?"


def short_license(text: str) -> str:
    """The licence's name without its notes: ``MIT (OpenAI CLIP)`` -> ``MIT``; ``?`` when not recorded."""
    return text.split(" (", 1)[0].split(";", 1)[0].strip() or "?"


def format_table() -> str:
    """``list``: every asset's status, kind, size, licence and path (``verify NAME`` / the registry: full terms)."""
    rows = [("name", "status", "kind", "size", "license", "path")]
    for asset in ASSETS.values():
        rows.append((asset.name, "present" if asset.path.is_file() else "missing", asset.kind, asset_size(asset),
                     short_license(asset.license), str(asset.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines) + "\n(~: download size; the full licence terms: models/assets.py)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.assets", description="pretrained file registry")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every asset with its status, size, licence and path")
    p_fetch = sub.add_parser("fetch", help="download assets into the cache")
    p_fetch.add_argument("names", nargs="+")
    p_fetch.add_argument("--force", action="store_true", help="download again even if present")
    p_fetch.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p_verify = sub.add_parser("verify", help="check cached files against their known sha256")
    p_verify.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        print(format_table())
        return 0
    status = 0
    for name in args.names:
        try:
            if args.command == "fetch":
                print(f"{name}: {fetch(name, force=args.force, timeout=args.timeout)}")
            else:
                result = verify(name)
                print(f"{name}: {'ok' if result else 'present (no known sha256)'}")
        except (UnknownAssetError, AssetMissingError, AssetDownloadError, AssetHashError) as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
