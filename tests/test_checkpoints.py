"""Checkpoint formats, converters, export and safety."""
import builtins
import io
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from models import checkpoints
from models.checkpoints import (CheckpointError, StyleGANConfig, UnsafeCheckpointError, UnsupportedModelError,
                                from_nvidia_state_dict, load, read, save, to_nvidia_state_dict)
from tests.helpers_checkpoints import (FIXTURES, d_init_kwargs, fixture_checkpoint, fixture_reference, g_init_kwargs,
                                       nvidia_nets, random_rosinality_sd, rosinality_shapes, write_nvidia_pickle,
                                       write_tf_pickle)

FIXTURE = FIXTURES / "rosinality_tiny.pt"
CHANNELS = {4: 32, 8: 32, 16: 24, 32: 16}


@pytest.fixture(scope="module")
def raw():
    return fixture_checkpoint()


@pytest.fixture(scope="module")
def ref():
    return fixture_reference()


def assert_same_sd(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@torch.no_grad()
def render(g, z):
    return g([z], randomize_noise=False)[0]


# ---------------------------------------------------------------------------------------------- converters

def small_table(size, cm):
    """rosinality's cm table divided by 16: same shape logic, 256x fewer weights (keeps the test fast)."""
    return {r: c // 16 for r, c in checkpoints.rosinality_channel_table(size, cm).items()}


@pytest.mark.parametrize("size,cm,n_mlp", [(32, 2, 2), (64, 1, 8), (128, 1, 2), (256, 2, 8)])
def test_generator_roundtrip_rosinality_nvidia(size, cm, n_mlp):
    ros = random_rosinality_sd("G", size=size, style_dim=32, n_mlp=n_mlp, channels=small_table(size, cm))
    avg = torch.randn(32)
    nv = to_nvidia_state_dict(ros, "G", latent_avg=avg)
    if (size, n_mlp) == (256, 8):  # key counts: rosinality 135, ADA 144 at 256 px
        assert len(ros) == 135 and len(nv) == 144
    c4 = small_table(size, cm)[4]
    assert nv["synthesis.b4.const"].shape == (c4, 4, 4)
    assert nv[f"synthesis.b{size}.conv1.noise_strength"].shape == ()
    assert nv[f"synthesis.b{size}.conv0.noise_const"].shape == (size, size)
    assert nv["synthesis.b8.torgb.bias"].shape == (3,)
    assert torch.equal(nv["mapping.w_avg"], avg)
    assert torch.equal(nv["synthesis.b8.conv0.weight"], ros["convs.0.conv.weight"][0])  # no flip
    back = from_nvidia_state_dict(nv, "G")
    assert_same_sd(back, ros)
    assert_same_sd(to_nvidia_state_dict(back, "G", latent_avg=avg), nv)


@pytest.mark.parametrize("size,cm", [(32, 2), (64, 1), (256, 2)])
def test_discriminator_roundtrip_rosinality_nvidia(size, cm):
    ros = random_rosinality_sd("D", size=size, channels=small_table(size, cm))
    nv = to_nvidia_state_dict(ros, "D")
    assert nv[f"b{size}.fromrgb.weight"].shape[1] == 3
    assert torch.equal(nv["b4.out.weight"], ros["final_linear.1.weight"])
    assert_same_sd(from_nvidia_state_dict(nv, "D"), ros)


def test_key_table_of_spec_4_5(raw):
    """Entries of the key-map tables, checked value by value (a symmetric mix-up would survive a round trip)."""
    g, d = raw["g_ema"], raw["d"]
    nv = to_nvidia_state_dict(g, "G")
    pairs = [("mapping.fc1.weight", g["style.2.weight"]),
             ("synthesis.b4.const", g["input.input"][0]),
             ("synthesis.b4.conv1.noise_const", g["noises.noise_0"][0, 0]),
             ("synthesis.b4.conv1.noise_strength", g["conv1.noise.weight"][0]),
             ("synthesis.b8.conv0.noise_const", g["noises.noise_1"][0, 0]),
             ("synthesis.b8.conv1.noise_const", g["noises.noise_2"][0, 0]),
             ("synthesis.b16.conv0.weight", g["convs.2.conv.weight"][0]),
             ("synthesis.b16.conv1.affine.bias", g["convs.3.conv.modulation.bias"]),
             ("synthesis.b16.conv1.bias", g["convs.3.activate.bias"]),
             ("synthesis.b16.torgb.weight", g["to_rgbs.1.conv.weight"][0]),
             ("synthesis.b32.torgb.bias", g["to_rgbs.2.bias"].flatten())]
    for key, value in pairs:
        assert torch.equal(nv[key], value), key
    nd = to_nvidia_state_dict(d, "D")
    for key, value in [("b32.fromrgb.weight", d["convs.0.0.weight"]),
                       ("b32.conv0.weight", d["convs.1.conv1.0.weight"]),
                       ("b16.conv1.weight", d["convs.2.conv2.1.weight"]),
                       ("b16.skip.weight", d["convs.2.skip.1.weight"]),
                       ("b8.conv0.bias", d["convs.3.conv1.1.bias"]), ("b4.conv.weight", d["final_conv.0.weight"]),
                       ("b4.fc.weight", d["final_linear.0.weight"])]:
        assert torch.equal(nd[key], value), key
    assert torch.equal(nd["b16.conv1.resample_filter"],
                       torch.tensor([1., 3, 3, 1]).outer(torch.tensor([1., 3, 3, 1])) / 64)


@pytest.mark.parametrize("size,cm,n_mlp", [(256, 1, 8), (256, 1, 2), (512, 2, 8), (1024, 2, 8)])
def test_standard_configs_are_inferred_from_shapes(size, cm, n_mlp):
    g = rosinality_shapes("G", size=size, n_mlp=n_mlp, channel_multiplier=cm)
    d = rosinality_shapes("D", size=size, channel_multiplier=cm)
    as_sd = {k: torch.empty(v, device="meta") for k, v in g.items()}
    cfg = checkpoints.infer_config(as_sd, {k: torch.empty(v, device="meta") for k, v in d.items()})
    assert (cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.d_channels) == (size, 512, n_mlp, cm, None)
    assert cfg.generator_kwargs()["channels"] is None  # standard table: built from channel_multiplier


def test_nonstandard_resample_filter_is_refused(raw):
    nv = to_nvidia_state_dict(raw["g_ema"], "G")
    nv["synthesis.b8.conv0.resample_filter"] = torch.ones(4, 4) / 16
    with pytest.raises(UnsupportedModelError, match="resample_filter"):
        from_nvidia_state_dict(nv, "G")


def test_config_inference_and_from_dict_validation(raw):
    cfg = read(FIXTURE).config
    assert cfg.channels == CHANNELS and cfg.channel_multiplier is None
    assert (cfg.size, cfg.style_dim, cfg.n_mlp, cfg.n_latent) == (32, 64, 2, 8)
    assert StyleGANConfig(size=256, channel_multiplier=1).channels[256] == 64
    assert StyleGANConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CheckpointError, match="chanels"):
        StyleGANConfig.from_dict(dict(cfg.to_dict(), chanels={}))
    bad = dict(raw["g_ema"])
    bad["style.1.weight"] = torch.randn(64, 128)  # a conditional mapping
    with pytest.raises(UnsupportedModelError, match="conditional"):
        checkpoints.infer_config(bad)


# ------------------------------------------------------------------------------------- rosinality / export

def test_rosinality_snapshot_extra_and_selection(raw):
    ckpt = load(FIXTURE, networks=("g_ema",))
    assert ckpt.g is None and ckpt.d is None and ckpt.source_format == "rosinality"
    assert ckpt.extra["args"] == dict(size=32, latent=64, n_mlp=2, channel_multiplier=2)


def test_legacy_torch_format_and_bare_state_dict(tmp_path, raw, ref):
    legacy = tmp_path / "legacy.pt"
    torch.save({"g_ema": raw["g_ema"], "latent_avg": raw["latent_avg"]}, legacy, _use_new_zipfile_serialization=False)
    bare = tmp_path / "bare.pt"
    torch.save(raw["g_ema"], bare)
    for path in (legacy, bare):
        ckpt = load(path)
        assert torch.allclose(render(ckpt.g_ema, ref["z"]), ref["img"], atol=1e-4)


def test_export_roundtrip_is_rosinality_compatible(tmp_path, ref):
    src = load(FIXTURE)
    out = save(tmp_path / "sub" / "export.pt", g_ema=src.g_ema, g=src.g, d=src.d, latent_avg=src.latent_avg,
               config=src.config, kimg=12.5)
    assert [p.name for p in out.parent.iterdir()] == ["export.pt"]  # atomic: no temporary file left
    plain = torch.load(out, weights_only=True)  # no allow-list needed
    assert {"g_ema", "g", "d", "latent_avg", "styleshift_config", "kimg"} <= set(plain)
    assert_same_sd(plain["g_ema"], src.g_ema.state_dict())
    again = load(out)
    assert again.source_format == "styleshift" and again.config.channels == CHANNELS
    assert again.extra == {"kimg": 12.5}
    assert torch.equal(render(again.g_ema, ref["z"]), render(src.g_ema, ref["z"]))
    with torch.no_grad():
        assert torch.equal(again.d(ref["d_input"]), src.d(ref["d_input"]))


def test_export_rejects_bad_input_without_touching_target(tmp_path, raw):
    target = tmp_path / "keep.pt"
    target.write_bytes(b"old")
    with pytest.raises(TypeError, match="not plain"):
        save(target, g_ema=raw["g_ema"], junk=object())
    with pytest.raises(ValueError, match="at least one"):
        save(target)
    assert target.read_bytes() == b"old"


def test_export_infers_config_from_modules(tmp_path):
    from models.stylegan2 import Discriminator, Generator
    g = Generator(16, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16}, conv_clamp=256)
    d = Discriminator(16, channels={4: 32, 8: 32, 16: 16}, mbstd_group_size=None)
    cfg = load(save(tmp_path / "m.pt", g_ema=g, d=d)).config
    assert (cfg.conv_clamp, cfg.mbstd_group_size, cfg.channels) == (256.0, None, {4: 32, 8: 32, 16: 16})


def test_psp_checkpoint(tmp_path, raw, ref):
    sd = {"encoder.body.0.weight": torch.randn(3, 3)}
    sd.update({"decoder." + k: v for k, v in raw["g_ema"].items()})
    path = tmp_path / "psp.pt"
    wplus_avg = raw["latent_avg"].repeat(8, 1)  # pSp/e4e keep the mean W repeated over the W+ rows
    torch.save({"state_dict": sd, "latent_avg": wplus_avg, "opts": {"output_size": 32}}, path)
    ckpt = load(path)
    assert ckpt.source_format == "pSp" and ckpt.g is None and ckpt.extra == {"opts": {"output_size": 32}}
    assert torch.equal(ckpt.latent_avg, raw["latent_avg"])
    assert torch.allclose(render(ckpt.g_ema, ref["z"]), ref["img"], atol=1e-4)


def test_prefixed_state_dict_explains_itself(tmp_path, raw):
    path = tmp_path / "dualstylegan.pt"
    torch.save({"g_ema": {"generator." + k: v for k, v in raw["g_ema"].items()}}, path)
    with pytest.raises(CheckpointError, match="prefix 'generator.'"):
        load(path)


# ------------------------------------------------------------------------------------------ NVIDIA pickles

def test_nvidia_pickle_loads_without_dnnlib_and_matches(tmp_path, raw, ref):
    marker = tmp_path / "module_src_ran"
    path = write_nvidia_pickle(tmp_path / "net.pkl", nvidia_nets(raw),
                               module_src=f"open({str(marker)!r}, 'w').close()",
                               training_set_kwargs={"path": "ffhq.zip", "resolution": 32})
    ckpt = load(path)
    assert not marker.exists()
    assert not any(m == "dnnlib" or m.startswith(("dnnlib.", "torch_utils")) for m in sys.modules)
    cfg = ckpt.config
    assert (cfg.source_format, cfg.conv_clamp, cfg.mbstd_group_size, cfg.num_fp16_res) == ("nvidia-pkl", 256.0, 8, 4)
    assert cfg.channels == CHANNELS and ckpt.d.stddev_group == 8 and ckpt.g_ema.conv_clamp == 256
    assert ckpt.extra == {"training_set_kwargs": {"path": "ffhq.zip", "resolution": 32}}
    assert torch.equal(ckpt.latent_avg, raw["latent_avg"])
    # the converted networks equal networks built from the equivalent rosinality state dicts
    for key in ("g_ema", "g"):
        reference = checkpoints.build_generator(cfg, raw[key])
        assert torch.equal(render(getattr(ckpt, key), ref["z"]), render(reference, ref["z"]))
    assert torch.allclose(render(ckpt.g_ema, ref["z"]), ref["img"], atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(ckpt.d(ref["d_input"]), ref["d_logits"], atol=1e-4)


def test_load_by_asset_name(tmp_path, raw, monkeypatch):
    from models import assets
    monkeypatch.setenv("STYLESHIFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(assets.AssetMissingError, match="fetch stylegan2-ffhq-256"):
        load("stylegan2-ffhq-256")
    target = assets.get("stylegan2-ffhq-256").path
    target.parent.mkdir(parents=True)
    write_nvidia_pickle(target, nvidia_nets(raw))
    ckpt = load("stylegan2-ffhq-256", networks=("g_ema",))
    assert ckpt.path == target and ckpt.source_format == "nvidia-pkl"


@pytest.mark.parametrize("which,kwargs,reason", [
    ("G", g_init_kwargs(c_dim=0) | {"c_dim": 10}, "conditional"),
    ("G", g_init_kwargs(architecture="resnet"), "'skip'"),
    ("G", g_init_kwargs() | {"img_channels": 1}, "img_channels"),
    ("D", d_init_kwargs(architecture="orig"), "'resnet'"),
    ("D", d_init_kwargs(c_dim=10), "conditional"),
    ("D", d_init_kwargs(epilogue_kwargs={"mbstd_num_channels": 2}), "mbstd_num_channels"),
])
def test_nvidia_pickle_unsupported_models(tmp_path, raw, which, kwargs, reason):
    nets = nvidia_nets(raw, **({"g_kwargs": kwargs} if which == "G" else {"d_kwargs": kwargs}))
    with pytest.raises(UnsupportedModelError, match=reason):
        load(write_nvidia_pickle(tmp_path / "bad.pkl", nets))


def test_tf_pickle_flips_conv0_up_and_adds_mod_bias(tmp_path, raw, ref):
    path = write_tf_pickle(tmp_path / "tf.pkl", raw["g_ema"], raw["d"], raw["latent_avg"])
    got = read(path)
    assert got.config.source_format == "nvidia-tf-pkl" and got.config.mbstd_group_size == 4
    for key in ("g_ema", "g"):
        assert_same_sd(got.__dict__[key], raw["g_ema"])
    assert_same_sd(got.d, raw["d"])
    ckpt = load(path, networks=("g_ema", "d"))
    assert torch.allclose(render(ckpt.g_ema, ref["z"]), ref["img"], atol=1e-4)
    with pytest.raises(UnsupportedModelError, match="conditional"):
        read(write_tf_pickle(tmp_path / "c.pkl", raw["g_ema"], raw["d"], raw["latent_avg"],
                             g_kwargs={"label_size": 10}))


@pytest.mark.parametrize("protocol", [2, 5])
def test_nvidia_and_tf_pickles_in_other_protocols(tmp_path, raw, protocol):
    """Protocol 2 stores bytes through ``_codecs.encode`` and Python 2 names; protocol 5 stores numpy arrays
    through ``_frombuffer``."""
    ada = read(write_nvidia_pickle(tmp_path / "ada.pkl", nvidia_nets(raw), protocol=protocol))
    assert_same_sd(ada.g_ema, raw["g_ema"])
    assert_same_sd(ada.d, raw["d"])
    tf = read(write_tf_pickle(tmp_path / "tf.pkl", raw["g_ema"], raw["d"], raw["latent_avg"], protocol=protocol))
    assert_same_sd(tf.g_ema, raw["g_ema"])
    assert torch.equal(tf.latent_avg, raw["latent_avg"])


def test_torch_files_without_checksums_or_rewritten_by_zipfile(tmp_path, raw, ref):
    """torch's ``compute_crc32=False`` writes CRC fields of 0; Python's zipfile writes no zip64 records."""
    import zipfile
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"g_ema": raw["g_ema"], "latent_avg": raw["latent_avg"]}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(FIXTURE) as zin, zipfile.ZipFile(tmp_path / "rezipped.pt", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    for name in ("nocrc.pt", "rezipped.pt"):
        ckpt = load(tmp_path / name, networks=("g_ema",))
        assert torch.allclose(render(ckpt.g_ema, ref["z"]), ref["img"], atol=1e-4)


def test_shared_references_in_extras_stay_shared(tmp_path, raw):
    shared = [1, 2, {"deep": [3]}]
    args = {"a": shared, "b": shared, "ns": __import__("argparse").Namespace(x=shared)}
    torch.save({"g_ema": raw["g_ema"], "args": args}, tmp_path / "shared.pt")
    extra = read(tmp_path / "shared.pt").extra["args"]
    assert extra["a"] == shared and extra["a"] is extra["b"] and extra["ns"] == {"x": shared}
    assert checkpoints.is_plain(extra) and not checkpoints.is_plain([object()])
    loop: list = []
    loop.append(loop)
    assert not checkpoints.is_plain({"loop": loop})  # cycles are not plain data (save() refuses them)


# ------------------------------------------------------------------------------------------------ safety

class _Payload:
    """Unpickling this would create ``path`` (stands in for os.system & co.)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _SystemPayload(_Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_Payload, _SystemPayload])
def test_malicious_pt_is_refused_and_nothing_runs(tmp_path, raw, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": raw["g_ema"], "args": payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="nothing from the file was executed"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [_Payload, _SystemPayload])
def test_malicious_pkl_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": payload(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="not on the allow-list"):
        load(path)
    assert not marker.exists()


class _EvilStorage:
    """A pickle whose embedded "storage" blob is a torch.save of a payload (torch's own loader would run it)."""

    def __init__(self, marker):
        buf = io.BytesIO()
        torch.save(_Payload(marker), buf, _use_new_zipfile_serialization=False)
        self.blob = buf.getvalue()

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.blob,))


def test_malicious_storage_blob_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_storage.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage(marker)}))
    with pytest.raises(UnsafeCheckpointError):
        load(path)
    assert not marker.exists()


def test_corrupt_files_give_clear_errors(tmp_path, raw):
    data = FIXTURE.read_bytes()
    cases = {"truncated.pt": (data[: len(data) // 2], "truncated"),
             "random.bin": (np.random.RandomState(0).bytes(4096), "unknown file format"),
             "random.pkl": (b"\x80\x04" + np.random.RandomState(1).bytes(4096), "corrupt|truncated"),
             "empty.pt": (b"", "empty")}
    pkl = write_nvidia_pickle(tmp_path / "ok.pkl", nvidia_nets(raw)).read_bytes()
    cases["truncated.pkl"] = (pkl[: len(pkl) // 2], "truncated")
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            load(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        load(tmp_path / "other.pt")


# ---------------------------------------------------------------------------------------------------- CLI

def test_cli_info_and_convert(tmp_path, raw, ref, capsys):
    src = write_nvidia_pickle(tmp_path / "net.pkl", nvidia_nets(raw))
    assert checkpoints.main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "nvidia-pkl" in out and "conv_clamp:         256.0" in out
    n_g = sum(v.numel() for k, v in raw["g_ema"].items() if not k.startswith("noises.") and "kernel" not in k)
    assert f"{n_g:,} parameters" in out
    dst = tmp_path / "converted.pt"
    assert checkpoints.main(["convert", str(src), str(dst)]) == 0
    again = load(dst)
    assert again.source_format == "styleshift" and again.config.conv_clamp == 256.0
    assert again.config.mbstd_group_size == 8
    assert torch.allclose(render(again.g_ema, ref["z"]), ref["img"], atol=1e-4)
    assert checkpoints.main(["info", str(tmp_path / "nope.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
