"""Tests for pytest_steer.storage.files: atomic writes leave the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_steer.storage.files import atomic_write_bytes, atomic_write_json


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_bytes_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "deeper" / "f.bin"  # parent folders are created
    atomic_write_bytes(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert leftovers(path.parent) == []


def test_atomic_write_json_content(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    atomic_write_json(path, {"b": 1, "a": [1.5, "é"]})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"b": 1, "a": [1.5, "é"]}
    assert text.endswith("\n") and "é" in text  # UTF-8, not \u escapes
    assert text.index('"a"') < text.index('"b"')  # sorted keys: stable diffs of committed baselines
    assert text.startswith('{\n  "a"')  # indented


def test_atomic_write_json_refuses_what_json_cannot_hold_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"ok": True}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("victim", ["replace", "fsync"])
def test_atomic_write_failure_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    path = tmp_path / "f.json"
    atomic_write_json(path, {"version": "old"})
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, victim, boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_json(path, {"version": "new" * 1000})
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(path, b"garbage")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_atomic_write_interrupt_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_dead_runs_shared_folder_is_reclaimed_and_a_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from pytest_steer.storage.files import hold_run, shared_dir

    cache = tmp_path / "cache"
    for run in ("dead", "live", "old-version-recent"):
        (shared_dir(cache, run) / "scores").mkdir(parents=True)
    (cache / "shared" / "dead.lock").write_text("")  # its run was killed: the lock file stays, nobody holds it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
        "time.sleep(60)"), str(cache / "shared" / "live.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = hold_run(cache, "mine")
        assert lock is not None and lock.is_locked
        assert not shared_dir(cache, "dead").exists() and not (cache / "shared" / "dead.lock").exists()
        assert shared_dir(cache, "live").is_dir()  # its run is alive
        assert shared_dir(cache, "old-version-recent").is_dir()  # no lock, less than a day old
        os.utime(shared_dir(cache, "old-version-recent"), (time.time() - 2 * 86400,) * 2)
        lock.release()
        assert hold_run(cache, "mine-again") is not None
        assert not shared_dir(cache, "old-version-recent").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_cache_that_cannot_be_written_holds_no_run_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_steer.storage.files import hold_run

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # as a read-only team cache answers (root ignores chmod)
    assert hold_run(tmp_path / "cache", "mine") is None
