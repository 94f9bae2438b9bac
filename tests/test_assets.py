"""Offline-first asset registry (docs/architecture.md, "Assets, offline first"; docs/checkpoints.md)."""
import hashlib
import io
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from models import assets
from models.assets import (Asset, AssetDownloadError, AssetHashError, AssetMissingError, UnknownAssetError, fetch,
                           register, resolve, verify)

REQUIRED = ["stylegan2-ffhq-1024", "stylegan2-ffhq-256", "stylegan2-afhqdog-512", "stylegan2-afhqcat-512",
            "stylegan2-church-256", "stylegan2-car-512", "stylegan2-horse-256", "inception-2015-12-05", "lpips-alex",
            "lpips-vgg", "lpips-squeeze", "clip-vit-b-32-openai", "clip-vit-b-16-openai", "vgg16", "vgg19",
            "identity-arcface-ir-se50"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLESHIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "ASSETS", dict(assets.ASSETS))  # registrations stay local to the test
    return tmp_path / "cache"


def put(asset: Asset, content: bytes) -> Path:
    asset.path.parent.mkdir(parents=True, exist_ok=True)
    asset.path.write_bytes(content)
    return asset.path


class FakeResponse(io.BytesIO):
    def __init__(self, content: bytes):
        super().__init__(content)
        self.headers = {"Content-Length": str(len(content))}


def test_table_is_complete_and_consistent():
    assert set(REQUIRED) <= set(assets.ASSETS)
    for asset in assets.ASSETS.values():
        assert asset.url is None or asset.url.startswith("https://"), asset.name
        assert asset.url or asset.instructions, asset.name
        assert asset.license and asset.description, asset.name
        if asset.sha256_prefix:  # torchvision's file names embed the digest prefix
            assert asset.filename.rsplit("-", 1)[1].split(".")[0] == asset.sha256_prefix
    assert assets.get("lpips-vgg").path == assets.get("vgg16").path  # one file, two names
    paths = {a.path for a in assets.ASSETS.values() if a.name != "lpips-vgg"}
    assert len(paths) == len(assets.ASSETS) - 1  # no other collisions (both CLIP files are renamed)


def test_cache_root_honours_env(cache, monkeypatch):
    assert assets.cache_root() == cache
    monkeypatch.delenv("STYLESHIFT_CACHE")
    assert assets.cache_root() == Path.home() / ".cache" / "styleshift"


def test_resolve_missing_names_file_url_target_and_command(cache):
    start = time.perf_counter()
    with pytest.raises(AssetMissingError) as info:
        resolve("stylegan2-ffhq-256")
    assert time.perf_counter() - start < 1.0  # fails instantly, never downloads
    message = str(info.value)
    target = cache / "stylegan2" / "stylegan2-ffhq-256x256.pkl"
    assert info.value.path == target and isinstance(info.value, FileNotFoundError)
    for needle in ("stylegan2-ffhq-256x256.pkl", "api.ngc.nvidia.com", str(target),
                   "python -m models.assets fetch stylegan2-ffhq-256"):
        assert needle in message
    with pytest.raises(AssetMissingError, match="pixel2style2pixel"):
        resolve("identity-arcface-ir-se50")


def test_resolve_present_passthrough_and_unknown(cache, tmp_path):
    asset = assets.get("stylegan2-church-256")
    put(asset, b"weights")
    assert resolve("stylegan2-church-256") == asset.path
    own = tmp_path / "mine.pt"
    own.write_bytes(b"x")
    assert resolve(own) == own and resolve(str(own)) == own
    with pytest.raises(FileNotFoundError, match="file not found"):
        resolve(tmp_path / "absent.pt")
    with pytest.raises(UnknownAssetError, match="'stylegan2-ffhq-256'") as info:
        resolve("stylegan2-ffhq-265")
    assert isinstance(info.value, KeyError)


def test_verify_full_digest_prefix_and_cache(cache, monkeypatch):
    content = b"some weights"
    digest = hashlib.sha256(content).hexdigest()
    full = register(Asset("t-full", "full.bin", None, sha256=digest, kind="test", instructions="x"))
    pref = register(Asset("t-pref", f"net-{digest[:8]}.pth", None, sha256_prefix=digest[:8], kind="test",
                          instructions="x"))
    none = register(Asset("t-none", "none.bin", None, kind="test", instructions="x"))
    for asset in (full, pref, none):
        put(asset, content)
    calls = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p: calls.append(p) or real(p))
    assert verify("t-full") is True and verify("t-pref") is True and verify("t-none") is None
    assert verify("t-full") is True
    assert len(calls) == 2  # the second check of t-full used the (size, mtime) cache
    put(full, b"other weights")  # new content, new mtime
    with pytest.raises(AssetHashError, match="does not match"):
        verify("t-full")
    with pytest.raises(AssetHashError):
        resolve("t-full")


def test_fetch_downloads_verifies_and_renames(cache, monkeypatch):
    content = b"\x00\x01" * 5000
    asset = register(Asset("t-dl", "dl.bin", "https://example.invalid/dl.bin",
                           sha256=hashlib.sha256(content).hexdigest(), kind="test"))
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda req, timeout: FakeResponse(content))
    assert fetch("t-dl", progress=False) == asset.path
    assert asset.path.read_bytes() == content
    assert [p.name for p in asset.path.parent.iterdir()] == ["dl.bin"]
    bad = register(Asset("t-bad", "bad.bin", "https://example.invalid/bad.bin", sha256="0" * 64, kind="test"))
    with pytest.raises(AssetHashError):
        fetch("t-bad", progress=False)
    assert not bad.path.exists() and [p.name for p in bad.path.parent.iterdir()] == ["dl.bin"]


def test_fetch_offline_fails_fast_and_leaves_nothing(cache, monkeypatch, capsys):
    def offline(req, timeout):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(assets.urllib.request, "urlopen", offline)
    start = time.perf_counter()
    with pytest.raises(AssetDownloadError, match="copy it to .*alexnet-owt-7be5be79.pth"):
        fetch("lpips-alex", progress=False)
    assert time.perf_counter() - start < 2.0
    assert list((cache / "torchvision").iterdir()) == []
    assert assets.main(["fetch", "lpips-alex", "identity-arcface-ir-se50"]) == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "no download URL" in err


def test_list_cli(cache, capsys):
    put(assets.get("vgg19"), b"x")
    assert assets.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "status", "kind", "size", "license", "path"]
    assert lines[-1].startswith("(~: download size")
    rows = {line.split()[0]: line for line in lines[1:-1]}
    status = {name: line.split()[1] for name, line in rows.items()}
    assert set(status) == set(assets.ASSETS)
    assert status["vgg19"] == "present" and status["stylegan2-ffhq-1024"] == "missing"
    assert any(line.endswith(str(cache / "torchvision" / "vgg19-dcbb9e9d.pth")) for line in lines)
    # size: the file's own when present (1 byte here), the registered download size when missing
    assert " 1 B " in rows["vgg19"] and " ~382 MB " in rows["stylegan2-ffhq-1024"]
    assert " NVIDIA Source Code License-NC " in rows["stylegan2-ffhq-1024"] and " MIT " in rows["clip-vit-b-32-openai"]
    assert set(assets.APPROX_SIZE_MB) == set(assets.ASSETS)  # every registered file has a size
    assert all(assets.short_license(a.license) != "?" for a in assets.ASSETS.values())  # and a licence
    assert assets.format_size(4_966_400) == "4.97 MB" and assets.format_size(553_433_881) == "553 MB"


def test_torch_hub_seed_serves_cached_trunk(cache, monkeypatch):
    alex = assets.get("lpips-alex")
    alex.path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.arange(6.0)}, alex.path)
    monkeypatch.setattr(assets, "verify", lambda name: None)  # stand-in file, its digest cannot match
    before = torch.hub.get_dir()
    with assets.torch_hub_seed("lpips-alex") as folder:
        assert (folder / alex.filename).resolve() == alex.path.resolve()
        state = torch.hub.load_state_dict_from_url(alex.url, progress=False)  # found locally, no download
        assert torch.equal(state["features.0.weight"], torch.arange(6.0))
    assert torch.hub.get_dir() == before
    with pytest.raises(AssetMissingError, match="vgg19"):
        with assets.torch_hub_seed("vgg19"):
            pass
