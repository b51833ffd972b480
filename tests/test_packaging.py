"""The wheel users install holds the built-in tasks and registers the plugin (no editable install needed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from pytest_steer.tasks import BUILTIN_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_builtin_tasks_and_the_entry_point(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = tmp_path.glob("pytest_steer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    builtin = sorted(p.name for p in BUILTIN_DIR.glob("*.json"))
    assert len(builtin) == 12
    for name in builtin:
        assert f"pytest_steer/tasks/builtin/{name}" in names, name
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]" in text and "steer = pytest_steer.plugin" in text
    assert not any(n.startswith(("tests/", "steering_cases/", "baselines/")) for n in names)
