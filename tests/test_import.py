"""Installing the plugin costs a pytest run without steering cases no torch or transformers import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers")

RECORDER = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    def pytest_collection_finish(session):
        loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        Path("loaded.json").write_text(json.dumps(loaded))
""")


def test_importing_the_plugin_imports_no_torch() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest_steer.plugin"],
                          capture_output=True, text=True, check=True)
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "pytest_steer" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def _collect(pytester: pytest.Pytester, *args: str) -> list[str]:
    pytester.makeconftest(RECORDER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q", *args)
    assert result.ret in (0, 5), result.stdout.str()
    import json

    return json.loads(Path(pytester.path / "loaded.json").read_text())


def test_a_run_without_steering_cases_imports_no_torch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert 1 + 1 == 2\n")
    assert _collect(pytester) == []


def test_collecting_steering_cases_imports_no_torch(pytester: pytest.Pytester, tiny_model_dir: Path,
                                                    tiny_task_file: Path) -> None:
    (pytester.path / "steer_light.toml").write_text(textwrap.dedent(f"""
        [models.tiny]
        path = "{tiny_model_dir}"
        [tasks.pairs]
        path = "{tiny_task_file}"
        [[suite]]
        models = ["tiny"]
        methods = ["task_vector", "function_vector"]
        tasks = ["pairs"]
    """))
    assert _collect(pytester) == []


def test_an_installed_third_party_method_is_not_imported_by_a_run_that_does_not_use_it(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "heavymethod-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "heavymethod.py").write_text(textwrap.dedent("""
        import pathlib, torch  # a method module imports torch at its top, as most do
        pathlib.Path("imported-heavymethod").write_text("yes")

        class Heavy:
            pass
    """))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heavymethod\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pytest_steer.methods]\nheavy = heavymethod:Heavy\n")
    pytester.makepyfile(test_plain="def test_one():\n    assert 1 + 1 == 2\n")
    pytester.makeconftest(RECORDER)
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--markers"],
                          cwd=pytester.path, env=env, capture_output=True, text=True)
    assert "@pytest.mark.heavy:" in done.stdout  # its marker is registered from the entry point's name alone
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                          cwd=pytester.path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    assert json.loads((pytester.path / "loaded.json").read_text()) == []
    assert not (pytester.path / "imported-heavymethod").exists()
