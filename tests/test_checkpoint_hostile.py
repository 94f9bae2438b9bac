"""Hostile and broken checkpoint files: refused with a clear ``CheckpointError``, quickly, without a memory
blow-up, and nothing from them runs.

Each case is a small file built at test time. All of them are loaded in one child process that resets its
peak-RSS counter (``/proc/self/clear_refs``) before each load, so the peak memory growth of every load is
measured on its own; the child also runs the ``info`` CLI on every file. An address-space limit on the child
keeps a regression from exhausting the machine's memory.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from models import checkpoints
from models.checkpoint_formats.errors import NOTHING_RAN
from models.checkpoints import (CheckpointError, CheckpointLimitError, CorruptCheckpointError, UnsafeCheckpointError,
                                load, read, to_nvidia_state_dict)
from tests.helpers_checkpoints import (FIXTURES, fixture_checkpoint, g_init_kwargs, persistent_tree,
                                       rosinality_to_tf_generator_vars, tf_state, write_nvidia_pickle,
                                       write_with_fake_modules)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = FIXTURES / "rosinality_tiny.pt"
PLACEHOLDER = "@@HOSTILE@@"
MAX_SECONDS = 5.0
MAX_GROWTH_MIB = 256
BIG = 250_000_000  # elements: 1 GB of float32
HUGE = 4_000_000_000  # elements: 16 GB of float32
LAUGHS = 40  # levels of a self-sharing list: 2**40 entries when expanded


class Reduce:
    """Pickles as ``func(*args)`` (optionally followed by ``BUILD state``)."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


# ---------------------------------------------------------------------------------------------- byte tools

def splice(data: bytes, ops: bytes) -> bytes:
    """Replace the pickled placeholder string by raw opcodes that push one object in its place."""
    marker = b"X" + struct.pack("<I", len(PLACEHOLDER)) + PLACEHOLDER.encode()
    assert data.count(marker) == 1
    return data.replace(marker, ops)


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def long1(value: int) -> bytes:
    """Pickle ``LONG1`` opcode: an int of any size."""
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def deep_list_ops(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)  # n empty lists, each appended to the one below


def deep_tuple_key_ops(depth: int) -> bytes:
    return b"}" + b")" + b"\x85" * depth + b"Ns"  # {((((...)))): None}


def colliding_keys_ops(n: int) -> bytes:
    """A dict of ``n`` ints that all hash to 0 (multiples of 2**61 - 1): inserting them is quadratic."""
    return b"}(" + b"".join(long1(k * ((1 << 61) - 1)) + b"N" for k in range(1, n + 1)) + b"u"


def system_ops(marker: Path) -> bytes:
    command = f"touch {marker}".encode()
    return (f"c{os.system.__module__}\nsystem\n".encode() + b"X" + struct.pack("<I", len(command)) + command
            + b"\x85R")


def rewrite_zip(src: Path, dst: Path, pickle_ops: bytes) -> Path:
    """Copy a torch zip archive record by record (stored, as torch writes), splicing ``pickle_ops`` into
    ``data.pkl``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, splice(data, pickle_ops) if info.filename.endswith("/data.pkl") else data)
    return dst


def write_zip(path: Path, records: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip archive from ``(name, data as stored, method, uncompressed size, crc)`` records."""
    out, central = bytearray(), bytearray()
    for name, data, method, size, crc in records:
        offset, raw = len(out), name.encode()
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0)
        out += raw + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, 0, offset) + raw
    cd_offset = len(out)
    out += central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central),
                                 cd_offset, 0)
    path.write_bytes(bytes(out))
    return path


def deflated_zeros(nbytes: int) -> tuple[bytes, int]:
    """A raw DEFLATE stream of ``nbytes`` zeros built without compressing them (full-flush segments repeat),
    and its CRC-32."""
    chunk = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    crc = 0
    zeros = bytes(chunk)
    for _ in range(nbytes // chunk):
        crc = zlib.crc32(zeros, crc)
    return segment * (nbytes // chunk) + final, crc


def record_start(path: Path, suffix: str) -> tuple[int, int]:
    """(offset of the data, size) of the zip record whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def flip_bit(path: Path, dst: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def laughs(depth: int = LAUGHS) -> list:
    value: list = []
    for _ in range(depth):
        value = [value, value]
    return value


def cyclic() -> list:
    value: list = []
    value.append(value)
    return value


# ---------------------------------------------------------------------------------------------- the cases

@dataclass
class Case:
    path: Path
    expected: type
    match: str


def build_cases(root: Path) -> dict[str, Case]:
    raw = fixture_checkpoint()
    g_ema = raw["g_ema"]
    cases: dict[str, Case] = {}

    def marker(name: str) -> Path:
        return root / f"pwned-{name}"

    def module_src(name: str) -> str:
        return f"open({str(marker(name))!r}, 'w').close()"

    def pt(name: str, payload, expected, match):
        path = root / name
        torch.save({"g_ema": g_ema, "latent_avg": raw["latent_avg"], "args": payload}, path)
        cases[name] = Case(path, expected, match)

    def pt_spliced(name: str, ops: bytes, expected, match):
        base = root / f"base-{name}"
        torch.save({"g_ema": g_ema, "latent_avg": raw["latent_avg"], "args": PLACEHOLDER}, base)
        cases[name] = Case(rewrite_zip(base, root / name, ops), expected, match)
        base.unlink()

    def nvidia(name: str, expected, match, protocol=4, ops: bytes | None = None, **extra):
        path = root / name
        nets = {"G_ema": ("Generator", to_nvidia_state_dict(g_ema, "G", raw["latent_avg"]), g_init_kwargs())}
        write_nvidia_pickle(path, nets, module_src=module_src(name), protocol=protocol, **extra)
        if ops is not None:
            path.write_bytes(splice(path.read_bytes(), ops))
        cases[name] = Case(path, expected, match)

    def ada_weight(name: str, weight, expected, match):
        """A complete ADA generator pickle whose ``mapping.fc0.weight`` is ``weight``."""
        def build(fake):
            tree = persistent_tree(to_nvidia_state_dict(g_ema, "G", raw["latent_avg"]), "Generator", g_init_kwargs(),
                                   module_src(name))
            fc0 = tree.meta["state"]["_modules"]["mapping"].meta["state"]["_modules"]["fc0"]
            fc0.meta["state"]["_parameters"]["weight"] = weight
            return {"G_ema": tree}
        cases[name] = Case(write_with_fake_modules(root / name, build), expected, match)

    tf_vars = rosinality_to_tf_generator_vars(g_ema)

    def tf_variable(name: str, value, expected, match):
        """A complete TF ``Gs`` pickle whose ``mapping/Dense0/weight`` is ``value``."""
        def build(fake):
            comps = {}
            for comp, variables in tf_vars.items():
                variables = dict(variables)
                if comp == "mapping":
                    variables["Dense0/weight"] = value
                comps[comp] = fake.Network(tf_state(f"G_{comp}", variables, {}, {}))
            gs = fake.Network(tf_state("Gs", {"dlatent_avg": raw["latent_avg"].numpy()}, {}, comps))
            gs._state["build_module_src"] = module_src(name)
            return gs
        cases[name] = Case(write_with_fake_modules(root / name, build), expected, match)

    # 1. constructor bombs and sizes beyond the file
    ada_weight("ada_tensor_ctor.pkl", Reduce(torch.Tensor, BIG), UnsafeCheckpointError, r"calls torch\.Tensor")
    from numpy._core import multiarray
    tf_variable("tf_reconstruct_bomb.pkl", Reduce(multiarray._reconstruct, np.ndarray, (BIG,), np.dtype("f4")),
                CheckpointLimitError, "_reconstruct asks for an array")
    tf_variable("tf_ndarray_call.pkl", Reduce(np.ndarray, (BIG,), np.dtype("f4")), UnsafeCheckpointError,
                r"calls numpy\.ndarray")
    tf_variable("tf_array_state_lie.pkl",
                Reduce(multiarray._reconstruct, np.ndarray, (0,), b"b",
                       state=(1, (BIG,), np.dtype("f4"), False, bytes(4))),
                CorruptCheckpointError, "needs 1000000000 bytes")
    pt("pt_tensor_ctor.pt", Reduce(torch.Tensor, BIG), UnsafeCheckpointError, r"calls torch\.Tensor")
    pt("pt_bytearray.pt", Reduce(bytearray, 1 << 30), UnsafeCheckpointError, "bytearray")
    pt("pt_numpy_reconstruct.pt", Reduce(multiarray._reconstruct, np.ndarray, (BIG,), np.dtype("f4")),
       CheckpointLimitError, "_reconstruct asks for an array")
    small = root / "small.pt"
    torch.save({"w": torch.zeros(4)}, small)
    with zipfile.ZipFile(small) as zf:
        records = [(i.filename, zf.read(i)) for i in zf.infolist()]
    path = root / "pt_storage_4e9.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for name, data in records:
            if name.endswith("/data.pkl"):
                data = replace_once(replace_once(data, b"K\x04t", long1(HUGE) + b"t"), b"K\x04\x85",
                                    long1(HUGE) + b"\x85")
            zout.writestr(name, data)
    cases[path.name] = Case(path, CheckpointLimitError, "its record holds 16 bytes")
    legacy = root / "legacy_storage_4e9.pt"
    torch.save({"w": torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    data = replace_once(legacy.read_bytes(), b"K\x04Nt", long1(HUGE) + b"Nt")
    legacy.write_bytes(replace_once(data, b"K\x04\x85", long1(HUGE) + b"\x85"))
    cases[legacy.name] = Case(legacy, CheckpointLimitError, "holds only")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        blob = torch.zeros(4).storage().__reduce__()[1][0]
    ada_weight("ada_blob_4e9.pkl", Reduce(torch.storage._load_from_bytes, replace_once(blob, b"K\x04Nt",
                                                                                       long1(HUGE) + b"Nt")),
               CheckpointLimitError, "holds only")
    stride0 = root / "pt_stride0_view.pt"  # a bare NVIDIA state dict: converting it copies every tensor
    bare = to_nvidia_state_dict(g_ema, "G", raw["latent_avg"])
    bare["mapping.fc0.weight"] = torch.zeros(1, 1).expand(1 << 14, 1 << 14)  # 1 GiB viewed on 4 bytes
    torch.save(bare, stride0)
    cases[stride0.name] = Case(stride0, CheckpointLimitError, "repeats the 4 bytes")
    memo = root / "memo_index.pkl"
    memo.write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 27) + b".")  # C unpickler: 2 GiB memo table
    cases[memo.name] = Case(memo, CheckpointError, "NoneType")
    bytearray8 = root / "bytearray8.pkl"
    bytearray8.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 8 << 30) + b".")
    cases[bytearray8.name] = Case(bytearray8, CorruptCheckpointError, "bytearray of 8589934592 bytes")
    deep_key = root / "deep_tuple_key.pkl"  # hashing it would overflow the C stack
    deep_key.write_bytes(b"\x80\x02" + deep_tuple_key_ops(1_000_000) + b".")
    cases[deep_key.name] = Case(deep_key, CheckpointLimitError, "nests tuples")
    pt_spliced("pt_deep_tuple_key.pt", deep_tuple_key_ops(1_000_000), CheckpointLimitError, "nests tuples")
    collide = root / "colliding_keys.pkl"  # about a minute of CPU if inserted
    collide.write_bytes(b"\x80\x02" + colliding_keys_ops(100_000) + b".")
    cases[collide.name] = Case(collide, CheckpointLimitError, "hash collisions")
    pt_spliced("pt_colliding_keys.pt", colliding_keys_ops(100_000), CheckpointLimitError, "hash collisions")

    # 2. exponential structures
    pt("pt_laughs_args.pt", laughs(), CheckpointLimitError, "shared references")
    nvidia("ada_laughs_kwargs.pkl", CheckpointLimitError, "shared references", training_set_kwargs=laughs())

    # 3. cycles and deep nesting
    pt("pt_cycle_args.pt", cyclic(), CheckpointLimitError, "cycle")
    nvidia("ada_cycle_kwargs.pkl", CheckpointLimitError, "cycle", training_set_kwargs=cyclic())
    pt_spliced("pt_deep_args.pt", deep_list_ops(100_000), CheckpointLimitError, "levels deep")
    nvidia("ada_deep_kwargs.pkl", CheckpointLimitError, "levels deep", protocol=3, ops=deep_list_ops(100_000),
           training_set_kwargs=PLACEHOLDER)

    # 4. decompression bomb: 1 GiB of zeros in a 1 MB record
    with zipfile.ZipFile(small) as zf:
        prefix = zf.infolist()[0].filename.split("/")[0]
    bomb, crc = deflated_zeros(1 << 30)
    bomb_records = []
    for name, data in records:
        if name.endswith("/data.pkl"):
            n = (1 << 30) // 4
            data = replace_once(replace_once(data, b"K\x04t", b"J" + struct.pack("<i", n) + b"t"), b"K\x04\x85",
                                b"J" + struct.pack("<i", n) + b"\x85")
        if name == f"{prefix}/data/0":
            bomb_records.append((name, bomb, zipfile.ZIP_DEFLATED, 1 << 30, crc))
        else:
            bomb_records.append((name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)))
    path = write_zip(root / "deflate_bomb.pt", bomb_records)
    cases[path.name] = Case(path, CheckpointLimitError, "compressed")
    small.unlink()

    # 5. damaged files: a bit flipped in data.pkl (inside a key) and in the weights
    start, size = record_start(FIXTURE, "/data.pkl")
    key = FIXTURE.read_bytes()[start:start + size].index(b"style.1.weight")
    cases["crc_data_pkl.pt"] = Case(flip_bit(FIXTURE, root / "crc_data_pkl.pt", start + key), CorruptCheckpointError,
                                    "CRC")
    start, size = record_start(FIXTURE, "/data/0")
    cases["crc_weights.pt"] = Case(flip_bit(FIXTURE, root / "crc_weights.pt", start + size // 2),
                                   CorruptCheckpointError, "CRC")

    # code-execution payloads in the places a hostile user would put them
    pt("pt_payload_after_tensors.pt", Reduce(os.system, f"touch {marker('pt_payload_after_tensors.pt')}"),
       UnsafeCheckpointError, r"posix\.system|os\.system")
    pt_spliced("pt_payload_in_data_pkl.pt", system_ops(marker("pt_payload_in_data_pkl.pt")), UnsafeCheckpointError,
               r"posix\.system|os\.system")
    return cases


CASE_NAMES = [
    "ada_tensor_ctor.pkl", "tf_reconstruct_bomb.pkl", "tf_ndarray_call.pkl", "tf_array_state_lie.pkl",
    "pt_tensor_ctor.pt", "pt_bytearray.pt", "pt_numpy_reconstruct.pt", "pt_storage_4e9.pt", "legacy_storage_4e9.pt",
    "ada_blob_4e9.pkl", "pt_stride0_view.pt", "memo_index.pkl", "bytearray8.pkl", "deep_tuple_key.pkl",
    "pt_deep_tuple_key.pt", "colliding_keys.pkl", "pt_colliding_keys.pt", "pt_laughs_args.pt",
    "ada_laughs_kwargs.pkl", "pt_cycle_args.pt", "ada_cycle_kwargs.pkl", "pt_deep_args.pt", "ada_deep_kwargs.pkl",
    "deflate_bomb.pt", "crc_data_pkl.pt", "crc_weights.pt", "pt_payload_after_tensors.pt",
    "pt_payload_in_data_pkl.pt",
]

# ---------------------------------------------------------------------------------------------- the child

CHILD = r"""
import contextlib, io, json, re, resource, sys, time
from models import checkpoints

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))  # kB

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False

for warm in sys.argv[1:3]:  # legitimate files: imports and first-use allocations happen here
    checkpoints.load(warm)
headroom = 4 << 30
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") * 1024 + headroom, resource.RLIM_INFINITY))
results = {}
for path in sys.argv[3:]:
    reset = reset_peak()
    before = status("VmRSS") if reset else status("VmHWM")
    start = time.perf_counter()
    error = None
    try:
        checkpoints.load(path)
    except BaseException as err:
        error = err
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli_rc = checkpoints.main(["info", path])
        except BaseException as err:
            cli_rc = "raised " + type(err).__name__
    results[path] = dict(error=type(error).__name__ if error else None,
                         mro=[c.__name__ for c in type(error).__mro__] if error else [],
                         message=str(error) if error else "", seconds=seconds,
                         peak_mib=(peak - before) / 1024, reset=reset, cli_rc=cli_rc, cli_stderr=stderr.getvalue())
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("dnnlib", "torch_utils"))
print("RESULTS " + json.dumps(dict(results=results, imported=imported)))
"""


def run_child(paths: list[Path], warm: list[Path]) -> dict[str, dict]:
    """Load ``warm`` (legitimate files), then each of ``paths`` with its own peak-RSS measurement."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, warm), *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=int(os.environ.get("HOSTILE_CHILD_TIMEOUT", "120")),
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert proc.returncode == 0 and line, f"child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    out = json.loads(line[len("RESULTS "):])
    assert not out["imported"], f"modules of the file's authors were imported: {out['imported']}"
    return out["results"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    root = tmp_path_factory.mktemp("hostile")
    cases = build_cases(root)
    assert sorted(cases) == sorted(CASE_NAMES)
    raw = fixture_checkpoint()
    legit_pkl = write_nvidia_pickle(root / "legit.pkl", {
        "G_ema": ("Generator", to_nvidia_state_dict(raw["g_ema"], "G", raw["latent_avg"]), g_init_kwargs())})
    results = run_child([c.path for c in cases.values()], [FIXTURE, legit_pkl])
    if not all(r["reset"] for r in results.values()):  # no clear_refs: one child per file
        results = {}
        for case in cases.values():
            results.update(run_child([case.path], [FIXTURE, legit_pkl]))
    report = "\n".join(f"{name:<28} {results[str(c.path)]['error'] or '-':<24} "
                       f"{results[str(c.path)]['seconds']:6.3f} s {results[str(c.path)]['peak_mib']:7.1f} MiB "
                       f"{c.path.stat().st_size:>9} B" for name, c in cases.items())
    print("\nhostile file                 refused with             time     peak RSS growth   size\n" + report)
    return cases, results, root


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_file_is_refused_quickly_cheaply_and_clearly(hostile, name):
    cases, results, root = hostile
    case = cases[name]
    result = results[str(case.path)]
    assert result["error"] is not None, f"{name} was loaded"
    assert "CheckpointError" in result["mro"], result
    assert case.expected.__name__ in result["mro"], result
    assert NOTHING_RAN in result["message"]
    assert re.search(case.match, result["message"]), result["message"]
    assert "more memory than is available" not in result["message"], result["message"]
    assert result["seconds"] < MAX_SECONDS, result
    assert result["peak_mib"] < MAX_GROWTH_MIB, result
    assert result["cli_rc"] == 1, result
    assert result["cli_stderr"].startswith("error: ") and "Traceback" not in result["cli_stderr"], result
    assert case.path.stat().st_size < 2 << 20  # small on disk
    assert not list(root.glob("pwned-*")), "a payload ran"


def test_no_payload_ran(hostile):
    _, _, root = hostile
    assert not list(root.glob("pwned-*"))


def test_real_cli_reports_corruption_without_traceback(hostile):
    cases, _, _ = hostile
    proc = subprocess.run([sys.executable, "-m", "models.checkpoints", "info", str(cases["crc_data_pkl.pt"].path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "CRC" in proc.stderr and "corrupt" in proc.stderr and NOTHING_RAN in proc.stderr


def test_convert_refuses_without_writing(hostile, tmp_path, capsys):
    cases, _, _ = hostile
    dst = tmp_path / "out.pt"
    assert checkpoints.main(["convert", str(cases["pt_laughs_args.pt"].path), str(dst)]) == 1
    assert capsys.readouterr().err.startswith("error: ") and not dst.exists()


# ---------------------------------------------------------------------------------------------- the cap

def test_total_cap_and_its_overrides(monkeypatch, capsys):
    with pytest.raises(CheckpointLimitError, match="max_bytes=N") as info:
        read(FIXTURE, max_bytes=4096)
    assert checkpoints.MAX_BYTES_ENV in str(info.value) and NOTHING_RAN in str(info.value)
    monkeypatch.setenv(checkpoints.MAX_BYTES_ENV, "4K")
    with pytest.raises(CheckpointLimitError, match="cap"):
        load(FIXTURE)
    assert read(FIXTURE, max_bytes="64M").g_ema is not None  # the argument wins over the variable
    assert checkpoints.main(["info", str(FIXTURE)]) == 1
    assert "cap" in capsys.readouterr().err
    monkeypatch.setenv(checkpoints.MAX_BYTES_ENV, "1G")
    assert load(FIXTURE).g_ema is not None
    assert checkpoints.main(["info", str(FIXTURE), "--max-bytes", "64MiB"]) == 0
    monkeypatch.setenv(checkpoints.MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=checkpoints.MAX_BYTES_ENV):
        read(FIXTURE)
