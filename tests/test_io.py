"""The atomic writers every output goes through: flushed to disk before the rename, never half-written, the file's
permission bits kept. Each test names the guard it checks; removing that guard makes it fail."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import explainrec.io as io


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_the_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """Without the fsync a power cut after the rename can leave an empty file where the old one was."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))), real_fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    target = tmp_path / "metrics.json"
    io.atomic_write_text(target, "new\n")
    (replaced,) = [p for e, p in events if e == "replace"]
    assert ("fsync", replaced) in events, events
    assert events.index(("fsync", replaced)) < events.index(("replace", replaced))
    assert ("fsync", str(tmp_path)) in events  # the rename itself made durable
    assert target.read_text() == "new\n"


def test_a_checkpoint_folder_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (synced.append(_fd_path(fd)), real_fsync(fd))[1])
    with io.atomic_dir(tmp_path / "checkpoint") as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
        inside = str(tmp / "model.safetensors")
    assert inside in synced


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    """Writing in place (open 'w') would truncate the old file first; the atomic writer only ever renames."""
    target = tmp_path / "predictions.jsonl"
    target.write_text("old line 1\nold line 2\n")
    reader = open(target, encoding="utf-8")  # a reader that opened the file before the write

    def refuse(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", refuse)
    with pytest.raises(OSError):
        io.atomic_write_text(target, "new\n" * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old line 1\nold line 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]
    io.atomic_write_text(target, "new\n")
    assert reader.read() == "old line 1\nold line 2\n"  # it still reads the whole old file, not a mix
    reader.close()
    assert target.read_text() == "new\n"


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    shared = tmp_path / "preds.jsonl"
    shared.write_text("x\n")
    shared.chmod(0o640)
    io.atomic_write_text(shared, "y\n")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640  # mkstemp alone would make it 600
    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "new.json", "{}\n")
        with io.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755  # mkdtemp alone would make it 700
    Path(tmp_path / "model").chmod(0o750)
    with io.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"2")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750
