"""A checkpoint never runs code stored in it, whatever its zip layout or pickle opcodes (issue #25).

Every payload here would create MARKER if it ran: either ``open(marker, "w")`` or a call of the
allow-listed ``DetectionModel(cfg)`` whose architecture yaml carries an ``activation`` that
ultralytics ``eval``s into that same ``open``. The marker appearing means code from the file ran.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detprune
from detprune import cli
from detprune.errors import BadInputError
from detprune.utils.checkpoints import load_torch_file

DETECTION_MODEL = b"cultralytics.nn.tasks\nDetectionModel\n"


def _evil_yaml(folder: Path, marker: Path) -> Path:
    """An architecture yaml whose activation creates ``marker`` when ultralytics evals it."""
    path = folder / "evil-arch.yaml"
    path.write_text(
        f"nc: 3\nactivation: open({str(marker)!r}, 'w')\n"
        "backbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, Conv, [32, 3, 2]]\n  - [-1, 1, Conv, [64, 3, 2]]\n"
        "head:\n  - [[2], 1, Detect, [nc]]\n"
    )
    return path


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE, which torch's restricted unpickler reads


def _model_call(yaml_path: Path) -> bytes:
    """Pickle opcodes for ``DetectionModel(str(yaml_path))`` (ultralytics then reads and evals the yaml)."""
    return DETECTION_MODEL + _unicode(str(yaml_path)) + b"\x85R"  # TUPLE1, REDUCE


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip with ``entries`` in this order (repeats allowed), stored uncompressed as torch writes it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name": the point of some tests
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _benign_entries(prefix: str = "archive") -> list[tuple[str, bytes]]:
    """The members ``torch.save({"w": tensor})`` writes, re-rooted under ``prefix``."""
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return [(f"{prefix}/{name.split('/', 1)[1]}", archive.read(name)) for name in archive.namelist()]


def _pickled(ops: bytes) -> bytes:
    return b"\x80\x02" + ops + b"."


@pytest.fixture()
def marker(tmp_path):
    return tmp_path / "MARKER"


def test_two_data_pkl_members_are_refused_on_every_route(tmp_path, marker, capsys, synthetic_kitti):
    """The first data.pkl calls DetectionModel(evil yaml), the last one is benign: torch reads one, a zipfile
    scan the other. Such an archive is refused before anything is unpickled."""
    evil = _pickled(b"}" + _unicode("model") + _model_call(_evil_yaml(tmp_path, marker)) + b"s")
    entries = _benign_entries()
    path = tmp_path / "two.pt"
    path.write_bytes(_zip([("archive/data.pkl", evil), *entries]))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(BadInputError, match="holds archive/data.pkl more than once"):
        load_torch_file(path)
    with pytest.raises(BadInputError, match="more than once"):
        detprune.load(str(path))
    routes = [
        ["prune", "--model", str(path), "--target-flops", "0.8", "--imgsz", "64", "--out", str(tmp_path / "p")],
        ["prune", "--model", "yolov8n.yaml", "--weights", str(path), "--target-flops", "0.8", "--imgsz", "64",
         "--out", str(tmp_path / "w")],
        ["eval", "--model", str(path), "--data", str(synthetic_kitti), "--imgsz", "64", "--device", "cpu"],
        ["export", "--model", str(path), "--imgsz", "64", "--out", str(tmp_path / "m.onnx")],
    ]
    for argv in routes:
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "more than once" in err, err
    assert not marker.exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _overwrite_1kb(path: Path) -> None:
    """Zero 1 KB inside the largest tensor of ``path`` (the zip's directory stays intact)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[start:start + 1024] = bytes(1024)
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_overwritten_tensor_bytes_fails_its_crc(tmp_path, synthetic_kitti, capsys):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.randn(4096)}, path)
    _overwrite_1kb(path)
    with pytest.raises(BadInputError, match=r"w\.pt: cannot read the weights file: the file is truncated or corrupt "
                                            r"\(Bad CRC-32"):
        load_torch_file(path, what="weights")
    from detprune.adapters import get_adapter

    adapter = get_adapter("yolov8n.yaml")
    model = adapter.save(adapter.load("yolov8n.yaml", class_names=["Car", "Pedestrian", "Cyclist"]), tmp_path / "m.pt")
    _overwrite_1kb(model)
    for argv in (["export", "--model", model, "--imgsz", "64", "--out", tmp_path / "m.onnx"],
                 ["eval", "--model", model, "--data", synthetic_kitti, "--imgsz", "64", "--device", "cpu"]):
        capsys.readouterr()
        assert cli.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Bad CRC-32" in err and str(model) in err, err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("text", ["hello\n", "e\n" * 101, "\x80\x03garbage", "PK\x03\x04 not really"])
def test_a_text_file_as_model_or_weights_is_one_line(tmp_path, capsys, text):
    path = tmp_path / "notes.pt"
    path.write_bytes(text.encode("latin-1"))
    for argv in (["export", "--model", str(path), "--imgsz", "64", "--out", str(tmp_path / "m.onnx")],
                 ["prune", "--model", "yolov8n.yaml", "--weights", str(path), "--target-flops", "0.8", "--imgsz", "64",
                  "--out", str(tmp_path / "o")]):
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "notes.pt" in err, err
        assert "truncated or corrupt" in err or "cannot read" in err or "no adapter" in err, err


# --- the fuzz test: random layouts and opcodes around allow-listed classes ---------------------

_ATOMS = [
    b"N", b")", b"}", b"]", b"(", b"t", b"\x85", b"\x86", b"R", b"\x81", b"b", b"s", b"a", b"0", b"2", b"\x94",
    b"q\x01", b"q\x02", b"h\x01", b"h\x02", b"K\x07", b"\x93", _unicode("ultralytics.nn.tasks"),
    _unicode("DetectionModel"), DETECTION_MODEL, b"cultralytics.nn.modules.conv\nConv\n", b"cbuiltins\nopen\n",
    b"ctorch.nn.modules.linear\nLinear\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
]
_MEMBERS = ["data.pkl", "byteorder", "version", ".format_version", ".storage_alignment", "data/0",
            ".data/serialization_id", "constants.pkl", "code/x.py", "../data.pkl"]


def _payloads(yaml_path: str, marker: str) -> dict[str, bytes]:
    """Opcode sequences that leave on the stack the result of running code (each creates the marker)."""
    return {
        "reduce": DETECTION_MODEL + _unicode(yaml_path) + b"\x85R",
        "memo": DETECTION_MODEL + b"q\x03" + b"0" + b"h\x03" + _unicode(yaml_path) + b"\x85R",
        "stack-global": _unicode("ultralytics.nn.tasks") + _unicode("DetectionModel") + b"\x93" + _unicode(yaml_path)
        + b"\x85R",
        "obj": b"(" + DETECTION_MODEL + _unicode(yaml_path) + b"o",  # OBJ: class and arguments after a MARK
        "open": b"cbuiltins\nopen\n" + _unicode(marker) + _unicode("w") + b"\x86R",
    }


def _torch_layout(pickle_bytes: bytes) -> list[tuple[str, bytes]]:
    """torch.save's members with ``pickle_bytes`` as data.pkl."""
    return [(name, pickle_bytes if name.endswith("/data.pkl") else data) for name, data in _benign_entries()]


@pytest.mark.parametrize("form", ["reduce", "memo", "stack-global", "obj", "open"])
def test_each_payload_form_is_refused_and_is_real(tmp_path, marker, form):
    """Refused by the loader; the same file read by torch unrestricted does create the marker."""
    payload = _payloads(str(_evil_yaml(tmp_path, marker)), str(marker))[form]
    path = tmp_path / "call.pt"
    path.write_bytes(_zip(_torch_layout(_pickled(payload))))
    # torch's restricted unpickler has no STACK_GLOBAL at all: that file is unreadable, not merely refused
    expected = "corrupt" if form == "stack-global" else "refusing to unpickle .*--trust-checkpoint"
    with pytest.raises(BadInputError, match=expected):
        load_torch_file(path)
    assert not marker.exists()
    try:
        torch.load(path, weights_only=False)
    except Exception:  # whatever ultralytics raises once the activation has run
        pass
    assert marker.exists()


@st.composite
def _pickles(draw, yaml_path: str, marker: str):
    """Random opcodes, with the real payloads mixed in."""
    atoms = st.sampled_from(_ATOMS + list(_payloads(yaml_path, marker).values()))
    body = b"".join(draw(st.lists(atoms, max_size=12)))
    return b"\x80\x02" + body + (b"." if draw(st.booleans()) else b"")


# bounded for CI: 300 examples take a few seconds; nothing is stored between runs
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_the_loader_loads_or_refuses_in_one_line_and_never_runs_code(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz")
    marker = folder / "MARKER"
    yaml_path = str(_evil_yaml(folder, marker))
    entries = _torch_layout(data.draw(_pickles(yaml_path, str(marker))))  # torch's layout, a fuzzed data.pkl
    for _ in range(data.draw(st.integers(0, 3))):  # then extra, repeated or misplaced members anywhere
        name = data.draw(st.sampled_from(_MEMBERS))
        prefix = data.draw(st.sampled_from(["archive", "archive", "other", "archive/inner"]))
        fuzzed = _pickles(yaml_path, str(marker)) if name.endswith(".pkl") else st.binary(max_size=16)
        content = data.draw(fuzzed)
        entries.insert(data.draw(st.integers(0, len(entries))), (f"{prefix}/{name}", content))
    path = folder / "fuzz.pt"
    if data.draw(st.integers(0, 5)) == 0:  # a legacy-format file: the pickle stream itself
        path.write_bytes(data.draw(_pickles(yaml_path, str(marker))))
    else:
        path.write_bytes(_zip(entries))
    try:
        load_torch_file(path)
    except BadInputError as err:
        assert len(str(err).splitlines()) == 1
    assert not marker.exists(), "code stored in the checkpoint ran"


def test_a_class_planted_where_a_module_calls_it_is_refused(tmp_path, marker):
    """Only allow-listed classes can be in the file, but as a module's ``forward`` or hook they would be called
    at run time: ``model(path)`` would then be ``DetectionModel(path)``, evaluating the yaml's activation."""
    from ultralytics.nn.tasks import DetectionModel

    for where in ("forward", "hook"):
        module = torch.nn.Identity()
        if where == "forward":
            module.__dict__["forward"] = DetectionModel
        else:
            module._forward_pre_hooks[0] = DetectionModel
        path = tmp_path / f"{where}.pt"
        torch.save({"model": module}, path)
        expected = "Identity.forward" if where == "forward" else "Identity._forward_pre_hooks"
        with pytest.raises(BadInputError, match=f"refusing to unpickle {expected} .*--trust-checkpoint"):
            load_torch_file(path)
    assert not marker.exists()
    planted = torch.load(tmp_path / "forward.pt", weights_only=False)["model"]
    try:
        planted(str(_evil_yaml(tmp_path, marker)))  # what running the loaded model would do
    except Exception:  # whatever ultralytics raises once the activation has run
        pass
    assert marker.exists()
