"""The method registry: built-ins resolved lazily, third-party methods through entry points."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_steer.methods import ENTRY_POINT_GROUP, MethodEntry, RegistryError, _from_entry_point, load_method, methods
from pytest_steer.methods.settings import DolaSettings, FunctionVectorSettings, TaskVectorSettings

THIRD_PARTY = '''
from dataclasses import dataclass

import numpy as np

from pytest_steer.methods.base import MethodOutcome
from pytest_steer.tasks import split_task


@dataclass(frozen=True)
class EveryOtherSettings:
    share: float = 0.5


class EveryOtherMethod:
    """A toy method: 'steers' the first `share` of the test items (plugin mechanics only)."""

    name = "every_other"
    settings_type = EveryOtherSettings

    def prepare(self, task, n_dev, n_test, seed):
        splits = split_task(task, n_dev, n_test, seed)
        return splits, {"test": len(splits.test)}

    def run(self, handle, task, splits, settings, context):
        n = len(splits.test)
        steered = (np.arange(n) < settings.share * n).astype(float)
        return MethodOutcome(unsteered=np.zeros(n), steered=steered, icl=None, chosen={"share": settings.share},
                             curves={}, vectors={}, vector_metadata={}, test_items=[p.input for p in splits.test])
'''


def test_builtins_are_registered_with_their_settings_and_load_lazily() -> None:
    registry = methods()
    assert [registry[n].settings_type for n in ("task_vector", "function_vector", "dola")] == [
        TaskVectorSettings, FunctionVectorSettings, DolaSettings]
    assert load_method("dola").name == "dola" and load_method("dola").settings_type is DolaSettings


class _EntryPoint:
    def __init__(self, name: str, value: str, obj: object) -> None:
        self.name, self.value, self._obj = name, value, obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_an_entry_point_that_is_not_a_method_is_named() -> None:
    with pytest.raises(RegistryError, match=r"pytest_steer.methods:broken = 'pkg:Thing' is not a method"):
        _from_entry_point(_EntryPoint("broken", "pkg:Thing", object()))
    with pytest.raises(RegistryError, match=r"'pkg:Gone' failed to load: No module named 'pkg'"):
        _from_entry_point(_EntryPoint("gone", "pkg:Gone", ModuleNotFoundError("No module named 'pkg'")))


def test_an_entry_point_method_is_registered_under_its_name() -> None:
    class Method:
        settings_type = TaskVectorSettings
        prepare = run = staticmethod(lambda *a: None)

    entry = _from_entry_point(_EntryPoint("mine", "pkg.mod:Method", Method))
    assert entry == MethodEntry("mine", TaskVectorSettings, "pkg.mod:Method")


def _install_third_party(site: Path) -> None:
    info = site / "everyother-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "everyother.py").write_text(THIRD_PARTY)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: everyother\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nevery_other = everyother:EveryOtherMethod\n")


def test_a_third_party_method_runs_as_a_suite_case(tmp_path: Path, tiny_model_dir: Path, tiny_task_file: Path) -> None:
    site = tmp_path / "site"
    _install_third_party(site)
    (tmp_path / "steer_third.toml").write_text(textwrap.dedent(f"""
        [defaults]
        n_dev = 10
        n_test = 20
        threshold = 0.4

        [methods.every_other]
        share = 0.5

        [models.tiny]
        path = "{tiny_model_dir}"

        [tasks.pairs]
        path = "{tiny_task_file}"

        [[suite]]
        models = ["tiny"]
        methods = ["every_other"]
        tasks = ["pairs"]
    """))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path / "steer_third.toml"),
            f"--steer-cache-dir={tmp_path / 'cache'}", f"--steer-baseline-dir={tmp_path / 'baselines'}",
            "--steer-update", f"--steer-report={tmp_path / 'r.json'}", "-m", "every_other", "--strict-markers"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    case = json.loads((tmp_path / "r.json").read_text())["cases"][0]
    assert case["id"] == "tiny-every_other-pairs" and case["status"] == "pass"
    assert case["result"]["metrics"]["steered"] == 0.5 and case["result"]["chosen"] == {"share": 0.5}
    assert (tmp_path / "baselines" / "tiny" / "every_other" / "pairs.json").is_file()


def test_editing_a_third_party_method_invalidates_its_stored_results(tmp_path: Path, tiny_model_dir: Path,
                                                                     tiny_task_file: Path) -> None:
    site = tmp_path / "site"
    _install_third_party(site)
    (tmp_path / "steer_third.toml").write_text(textwrap.dedent(f"""
        [defaults]
        n_dev = 10
        n_test = 20
        threshold = 0.0

        [models.tiny]
        path = "{tiny_model_dir}"

        [tasks.pairs]
        path = "{tiny_task_file}"

        [[suite]]
        models = ["tiny"]
        methods = ["every_other"]
        tasks = ["pairs"]
    """))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}

    def run(*extra: str) -> dict:
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path / "steer_third.toml"),
                f"--steer-cache-dir={tmp_path / 'cache'}", f"--steer-baseline-dir={tmp_path / 'baselines'}",
                f"--steer-report={tmp_path / 'r.json'}", "--steer-tolerance=0.99", *extra]
        subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        return json.loads((tmp_path / "r.json").read_text())["cases"][0]["result"]

    first = run("--steer-update")
    assert not first["reused"] and first["metrics"]["steered"] == 0.5
    assert run()["reused"]  # nothing changed: judged from the stored result
    module = site / "everyother.py"
    module.write_text(module.read_text().replace("settings.share * n", "0.25 * n"))  # an edit of its code only
    edited = run()
    assert not edited["reused"] and edited["metrics"]["steered"] == 0.25


def test_a_methods_code_identity_follows_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_steer.storage import identity

    package = tmp_path / "steerpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    identity.module_source_hash.cache_clear()
    before = identity.code_identity("steerpkg.method:Method")
    assert before.startswith(identity.plugin_source_hash() + "+") and len(before) > 20
    (package / "method.py").write_text("SCALE = 2\n")
    identity.module_source_hash.cache_clear()
    assert identity.code_identity("steerpkg.method:Method") != before
    assert identity.code_identity("pytest_steer.methods.dola:DolaMethod") == identity.plugin_source_hash()
    assert "steerpkg" not in sys.modules  # found, not imported


def test_the_contract_error_names_every_missing_capability() -> None:
    class Half:
        settings_type = dict  # not a dataclass

        def prepare(self, *args: object) -> None: ...

    with pytest.raises(RegistryError, match=r"lacks `settings_type` \(a dataclass\), `run`"):
        _from_entry_point(_EntryPoint("half", "pkg:Half", Half))


def test_optional_capabilities_are_read_from_the_contract() -> None:
    from pytest_steer.methods.contract import Batched, ChecksTask, replays, shares_work

    class Full:
        settings_type = TaskVectorSettings
        prepare = run = run_many = replay = staticmethod(lambda *a: None)

    entry = _from_entry_point(_EntryPoint("full", "pkg:Full", Full))
    assert entry.shares_work and entry.replays and shares_work(Full) and replays(Full)
    assert isinstance(TaskVectorSettings(), Batched) and isinstance(TaskVectorSettings(), ChecksTask)


def test_the_registry_loads_an_entry_point_only_when_it_is_looked_up() -> None:
    from pytest_steer.methods import _BUILTINS, Registry

    class Method:
        settings_type = TaskVectorSettings
        prepare = run = staticmethod(lambda *a: None)

    loads: list[str] = []

    class Point(_EntryPoint):
        def load(self) -> object:
            loads.append(self.name)
            return super().load()

    registry = Registry(_BUILTINS, {"mine": Point("mine", "pkg:Method", Method), "dola": Point("dola", "x:Y", None)})
    assert list(registry) == ["task_vector", "function_vector", "dola", "caa", "byo", "mine"] and "mine" in registry
    assert loads == []  # names, membership and markers need no import
    assert registry["mine"].settings_type is TaskVectorSettings and loads == ["mine"]
    assert registry["dola"].target.startswith("pytest_steer.")  # an entry point cannot replace a built-in


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "share-method"


def _install_example(site: Path) -> Path:
    """Lay the example package out as pip installs it: its source, and a dist-info with its entry points."""
    import shutil
    import tomllib

    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "src" / "share_method", site / "share_method")
    info = site / f"share_method-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    points = meta["entry-points"][ENTRY_POINT_GROUP]
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return site / "share_method" / "__init__.py"


def test_the_example_package_runs_as_a_suite_case_with_its_row_and_figures(tmp_path: Path, tiny_model_dir: Path,
                                                                          tiny_task_file: Path) -> None:
    source = _install_example(tmp_path / "site")
    (tmp_path / "steer_example.toml").write_text(textwrap.dedent(f"""
        [defaults]
        n_dev = 10
        n_test = 20
        threshold = 0.4

        [methods.share]
        share = 0.5

        [models.tiny]
        path = "{tiny_model_dir}"

        [tasks.pairs]
        path = "{tiny_task_file}"

        [[suite]]
        models = ["tiny"]
        methods = ["share"]
        tasks = ["pairs"]
    """))
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path / "steer_example.toml"),
                f"--steer-cache-dir={tmp_path / 'cache'}", f"--steer-baseline-dir={tmp_path / 'baselines'}",
                f"--steer-report={tmp_path / 'r.json'}", f"--steer-html={tmp_path / 'page.html'}", "-m", "share",
                "--strict-markers", *extra]
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    done = run("--steer-update")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "50% of items" in done.stdout  # its own column in the terminal table
    case = json.loads((tmp_path / "r.json").read_text())["cases"][0]
    assert case["id"] == "tiny-share-pairs" and case["status"] == "pass" and not case["result"]["reused"]
    page = (tmp_path / "page.html").read_text()
    assert "share_sweep" in page  # its curve drawn by the generic figures
    assert run().returncode == 0 and json.loads((tmp_path / "r.json").read_text())["cases"][0]["result"]["reused"]
    source.write_text(source.read_text().replace("SCALE = 1.0", "SCALE = 0.5"))  # an edit of the method's code
    done = run()
    result = json.loads((tmp_path / "r.json").read_text())["cases"][0]["result"]
    assert not result["reused"] and result["metrics"]["steered"] == 0.25
    assert done.returncode != 0  # and it regressed against the accepted 0.5
