"""backend.atomic: the one way files are replaced, whole or not at all."""

import json
import stat

import pytest

from backend import atomic


def test_writes_replace_the_file_whole_with_mode_644_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "record.json"
    atomic.write_json(path, {"a": 1}, end="\n")
    atomic.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and not path.read_text().endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic.write_text(tmp_path / "t", "x\n")
    atomic.write_bytes(tmp_path / "b", b"\x00\x01", fsync=False)
    assert (tmp_path / "t").read_text() == "x\n" and (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b", "record.json", "sub", "t"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(path, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.pth.") and tmp.suffix == ".png"
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_a_value_that_is_not_json_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "x.json", {"nan": float("nan")}, allow_nan=False)
    assert list(tmp_path.iterdir()) == []
