"""The plugin end to end through pytester, on a tiny random model (mechanics only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def _every_item_right_before(data: dict) -> None:
    """Edit a stored baseline as if the accepted model had scored every test item right (its means follow)."""
    data["per_item"]["steered"] = [1] * len(data["per_item"]["steered"])
    data["metrics"]["steered"] = 1.0
    data["metrics"]["delta"] = 1.0 - data["metrics"]["unsteered"]


def test_ids_markers_and_selection(suite) -> None:
    write, run = suite
    write(models='["tinya", "tinyb"]')
    result = run("--collect-only", "-q", "--strict-markers")
    result.stdout.fnmatch_lines(["steer_tiny.toml::tinya-task_vector-tinytask", "steer_tiny.toml::tinyb-task_vector-othertask"])
    assert result.ret == 0
    result = run("--collect-only", "-q", "--strict-markers", "-m", "task_vector and tinyb")
    result.stdout.fnmatch_lines(["*2/4 tests collected (2 deselected)*"])
    result = run("--collect-only", "-q", "-k", "othertask")
    result.stdout.fnmatch_lines(["*2/4 tests collected (2 deselected)*"])
    result = run("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.task_vector:*", "@pytest.mark.qwen:*"])


def test_missing_baseline_fails_with_the_command_that_creates_it(suite) -> None:
    write, run = suite
    write()
    result = run("-k", "tinytask")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*no baseline for tinya-task_vector-tinytask*", "*pytest 'steer_tiny.toml::tinya-task_vector-tinytask' --steer-update*"])
    # the numbers were computed: the table says the baseline is missing (not an error) and how to create it
    result.stdout.fnmatch_lines(["*tinytask*task_vector*missing*missing*",
                                 "*1 case(s) computed but not judged, no stored baseline: tinya-task_vector-tinytask*"])
    assert "error" not in result.stdout.str().split("pytest-steer ===")[-1]


def test_update_then_compare_then_regression(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    report = pytester.path / "report.json"
    result = run("--steer-update", f"--steer-report={report}", "--junitxml=junit.xml", "--steer-html=page.html")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*HTML report written: *page.html"])
    assert "accuracy against layer" in (pytester.path / "page.html").read_text()
    stored = pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.json"
    vector = stored.with_suffix(".safetensors")
    assert stored.is_file() and vector.is_file()
    data = json.loads(stored.read_text())
    for key in ("metrics", "curves", "chosen", "counts", "seed", "fingerprint", "versions", "per_item", "settings"):
        assert key in data
    assert data["schema"] == 2
    for run_only in ("status", "timing_s", "vector_file", "verdict", "worker", "gate", "expect"):
        assert run_only not in data, run_only
    assert "worker" not in data["diagnostics"]
    assert len(data["curves"]["dev_accuracy"]) == 3
    assert data["metrics"]["delta_ci"][0] <= data["metrics"]["delta"] <= data["metrics"]["delta_ci"][1]
    from pytest_steer.storage.tensors import read_tensors

    tensors, meta = read_tensors(vector)
    assert tensors["task_vector"].shape == (32,) and meta["layer"] == str(data["chosen"]["layer"])
    assert meta["fingerprint"] == data["fingerprint"]
    cases = _report(report)["cases"]
    assert {c["status"] for c in cases} == {"pass"} and len(cases) == 2
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="steer_steered"' in junit and 'name="steer_delta_ci"' in junit

    result = run()
    result.assert_outcomes(passed=2)

    n = len(data["per_item"]["steered"])
    edited = json.loads(json.dumps(data))
    mean = sum(data["per_item"]["steered"]) / n
    edited["metrics"]["steered"] = 0.25 if mean != 0.25 else 0.5  # a score edited, its per-item outcomes unchanged
    stored.write_text(json.dumps(edited))  # (lowered, it would hide a regression): never trusted
    result = run()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*field 'metrics.steered': * is not the mean of its per-item outcomes*"])

    data["per_item"]["steered"] = [1] * n  # every item right before: now each one the model misses is lost
    data["metrics"]["steered"] = 1.0
    data["metrics"]["delta"] = 1.0 - data["metrics"]["unsteered"]
    stored.write_text(json.dumps(data))
    result = run("--steer-regression=tolerance")  # the plain tolerance rule sees the drop too
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*regression: steered * is below the stored baseline 1.000*"])
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*regression: steered * is below the stored baseline 1.000 minus tolerance 0.000, "
                                 "significant at 0.0083 (alpha 0.05 / 6 comparisons, holm) (steered * McNemar p=*lost / 0 gained of 12)*"])


def test_threshold_failure_and_expected_failures(suite) -> None:
    write, run = suite
    extra = """
[[case]]
task = "tinytask"
expect = "fail"
reason = "random weights do not steer"

[[case]]
task = "othertask"
expect = "fail"
threshold = -1.0
"""
    write(threshold=2.0, extra=extra)
    result = run("--steer-update", "-rxX")
    result.assert_outcomes(xfailed=1, xpassed=1)
    result.stdout.fnmatch_lines(["*random weights do not steer*"])
    write(threshold=2.0)
    result = run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*below the threshold +2.000*"])


def test_a_regression_fails_even_where_the_gate_is_expected_to_fail(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write(threshold=2.0, extra='\n[[case]]\nmethod = "task_vector"\nexpect = "fail"\nreason = "declared"\n')
    run("--steer-update").assert_outcomes(xfailed=2)
    stored = pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.json"
    data = json.loads(stored.read_text())
    assert "expect" not in data and "gate" not in data  # they live in the case file only
    _every_item_right_before(data)
    stored.write_text(json.dumps(data))
    result = run("--steer-report=r.json", "--steer-regression=tolerance")
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*tinya-task_vector-tinytask*regression: steered * is below the stored baseline 1.000*"])
    statuses = {c["id"]: c["status"] for c in _report(pytester.path / "r.json")["cases"]}
    assert statuses == {"tinya-task_vector-tinytask": "fail", "tinya-task_vector-othertask": "xfail"}


def test_a_broken_case_file_does_not_stop_the_others(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    (pytester.path / "steer_broken.toml").write_text('[defaults]\nthreshold = "high"\n[[suite]]\nmodels=["x"]\nmethods=["task_vector"]\ntasks=["antonym"]\n')
    (pytester.path / "steer_syntax.toml").write_text("[[suite]\n")
    result = run("--steer-update")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*steer_broken.toml*threshold*expected a number*", "*steer_syntax.toml*cannot read case file*"])


def test_unused_baselines_are_listed_only_on_an_unfiltered_run(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    path = write()
    run("--steer-update").assert_outcomes(passed=2)
    stale = pytester.path / "baselines" / "gone" / "task_vector" / "oldtask.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"metrics": {}}')
    for selection in (("-k", "tinytask"), ("-m", "task_vector and tinytask"), (f"{path.name}::tinya-task_vector-tinytask",),
                      (path.name,)):  # a slice: the other cases' baselines are not stale, so no noise
        result = run(*selection)
        assert "not used by any selected case" not in result.stdout.str(), selection
    result = run()
    result.stdout.fnmatch_lines(["*1 baseline(s) not used by any selected case:*", "*gone*oldtask.json"])


def test_xdist_gives_the_same_numbers_and_writes_baselines_once(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write(models='["tinya", "tinyb"]')
    run("--steer-update", "--steer-report=serial.json").assert_outcomes(passed=4)
    serial_files = {p: p.read_text() for p in sorted((pytester.path / "baselines").rglob("*.json"))}
    # recomputed: the thread count (2 serially, 1 per worker) is no longer in the result key, so xdist would reuse
    result = run("-n", "2", "--dist", "loadgroup", "--steer-group=model", "--steer-update", "--steer-rerun",
                 "--steer-report=parallel.json")
    result.assert_outcomes(passed=4)
    serial = {c["id"]: c for c in _report(pytester.path / "serial.json")["cases"]}
    parallel = {c["id"]: c for c in _report(pytester.path / "parallel.json")["cases"]}
    assert serial.keys() == parallel.keys() and len(serial) == 4
    for cid in serial:
        for key in ("metrics", "curves", "chosen", "per_item", "fingerprint"):
            assert serial[cid]["result"][key] == parallel[cid]["result"][key], (cid, key)
        assert serial[cid]["worker"] == "master" and parallel[cid]["worker"].startswith("gw")
        assert parallel[cid]["model_loads"] == 1
        assert parallel[cid]["verdict"]["passed"] is True and parallel[cid]["verdict"]["baseline"] == "updating"
    workers = {parallel[c]["worker"] for c in parallel if c.startswith("tinya")}
    assert len(workers) == 1  # --steer-group=model: one xdist_group per model, so a model's cases share a worker
    for path, text in serial_files.items():
        a, b = json.loads(text), json.loads(path.read_text())
        assert a["metrics"] == b["metrics"] and a["per_item"] == b["per_item"]
    assert not list((pytester.path / "baselines").rglob("*.tmp"))


def test_by_default_cases_spread_over_the_workers(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write(models='["tinya"]')
    run("-n", "2", "--dist", "loadgroup", "--steer-update", "--steer-report=parallel.json").assert_outcomes(passed=2)
    cases = _report(pytester.path / "parallel.json")["cases"]
    assert {c["worker"] for c in cases} == {"gw0", "gw1"}  # one model, two cases: both cores work
    result = run("--steer-group=models")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--steer-group: expected one of case, model, got 'models'*"])


DOLA_FILE = """
[defaults]
threshold = -1.0
n_test = 6

[models.tiny]
path = "{model}"

[tasks.quiz]
path = "{quiz}"

[[suite]]
models = ["tiny"]
methods = ["dola"]
tasks = ["quiz"]
variant = "lower"
settings = {{ bucket = "lower" }}

[[suite]]
models = ["tiny"]
methods = ["dola"]
tasks = ["quiz"]
variant = "upper"
settings = {{ bucket = "upper" }}
"""


def test_dola_cases_run_store_their_baselines_by_variant_and_report(suite, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    _, run = suite
    quiz = pytester.path / "quiz.json"
    quiz.write_text(json.dumps([
        {"question": f"w{i}", "best_answer": f"v{i}", "correct_answers": [f"v{i}", f"v{i + 1} v{i}"],
         "incorrect_answers": [f"w{i + 1}", f"v{i + 2}"]} for i in range(8)
    ]))
    (pytester.path / "steer_dola.toml").write_text(DOLA_FILE.format(model=tiny_model_dir, quiz=quiz))
    result = run("--collect-only", "-q", "--strict-markers", "-m", "dola and upper")
    result.stdout.fnmatch_lines(["steer_dola.toml::tiny-dola-quiz-upper", "*1/2 tests collected (1 deselected)*"])
    report = pytester.path / "report.json"
    result = run("--steer-update", f"--steer-report={report}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*DoLa results*", "*tiny*quiz*lower*6*>*mc1*pass*", "*tiny*quiz*upper*6*>*mc1*pass*"])
    folder = pytester.path / "baselines" / "tiny" / "dola"
    assert sorted(p.name for p in folder.iterdir()) == ["quiz-lower.json", "quiz-upper.json"]  # no vector file
    stored = json.loads((folder / "quiz-upper.json").read_text())
    assert stored["variant"] == "upper" and stored["settings"]["bucket"] == "upper"
    assert set(stored["metrics"]["secondary"]) == {"mc2", "mc3"} and stored["metrics"]["metric"] == "mc1"
    assert len(stored["per_item"]["mc2_steered"]) == 6 and stored["diagnostics"]["premature_histogram"] == {"1": stored["diagnostics"]["scored_tokens"]}
    cases = {c["id"]: c for c in _report(report)["cases"]}
    assert cases["tiny-dola-quiz-lower"]["result"]["metrics"]["unsteered"] == cases["tiny-dola-quiz-upper"]["result"]["metrics"]["unsteered"]

    result = run()  # compared with the stored baselines, nothing unused
    result.assert_outcomes(passed=2)
    assert "not used by any selected case" not in result.stdout.str()
    _every_item_right_before(stored)  # the plain tolerance rule sees the drop
    (folder / "quiz-upper.json").write_text(json.dumps(stored))
    result = run("--steer-regression=tolerance", "--steer-tolerance=0.05")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*tiny-dola-quiz-upper*regression*"])


def test_a_case_id_defined_by_two_case_files_fails_naming_both(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    first = write(name="steer_a.toml")
    second = write(name="steer_b.toml")
    result = run("-k", "tinytask", "--steer-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*{second}: case tinya-task_vector-tinytask is already defined in {first}*"])
    written = sorted(p.name for p in (pytester.path / "baselines" / "tinya" / "task_vector").iterdir())
    assert written == ["tinytask.json", "tinytask.safetensors"]


def test_a_baseline_of_another_model_or_split_never_passes(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write(extra='\n[[case]]\ntask = "othertask"\nexpect = "fail"\nreason = "declared"\n', threshold=2.0)
    run("--steer-update", "-k", "tinytask").assert_outcomes(failed=1, deselected=1)  # the gate fails; baselines still written
    run("--steer-update", "-k", "othertask").assert_outcomes(xfailed=1, deselected=1)
    folder = pytester.path / "baselines" / "tinya" / "task_vector"
    for name in ("tinytask.json", "othertask.json"):
        data = json.loads((folder / name).read_text())
        data["fingerprint"] = "0" * 32
        (folder / name).write_text(json.dumps(data))
    write(threshold=-1.0, extra='\n[[case]]\ntask = "othertask"\nexpect = "fail"\nreason = "declared"\n')
    result = run()
    result.assert_outcomes(failed=2)  # an expected failure does not cover a changed model
    result.stdout.fnmatch_lines(["*tinya-task_vector-othertask: model changed: 00000000000000000000000000000000 -> *"])
    # the summary names the change once per model, not only inside each case's reasons
    result.stdout.fnmatch_lines(["model changed: tinya: 00000000000000000000000000000000 -> * (2 case(s) judged against "
                                 "baselines of the old model)"])

    run("--steer-update").assert_outcomes(passed=1, xpassed=1)
    text = (pytester.path / "steer_tiny.toml").read_text().replace("n_test = 12", "n_test = 10")
    (pytester.path / "steer_tiny.toml").write_text(text)
    result = run("-k", "tinytask")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*split changed: stored demos=38, dev=10, test=12, seed=0, this run demos=40, dev=10, test=10, seed=0*"])


@pytest.mark.parametrize("option, fragment", [
    ("--steer-tolerance=nan", "--steer-tolerance: expected a finite number, got 'nan'"),
    ("--steer-alpha=1.5", "--steer-alpha: expected a level between 0 and 1 (exclusive), got 1.5"),
    ("--steer-regression=strict", "--steer-regression: expected one of significant, tolerance, got 'strict'"),
    ("--steer-tolerance=-0.1", "--steer-tolerance: expected 'auto' or a number >= 0 (a drop), got '-0.1'"),
    ("--steer-tolerance=often", "--steer-tolerance: expected a number, got 'often'"),
    ("--steer-tolerance=1", "--steer-tolerance: expected 'auto' or a drop in [0, 1), got '1'"),
    ("--steer-progress=soon", "--steer-progress: expected a number, got 'soon'"),
    ("--steer-multiple=sidak", "--steer-multiple: expected one of holm, bh, none, got 'sidak'"),
    ("--steer-device=gpu", "--steer-device: expected one of auto, cpu, cuda, cuda:N, mps, got 'gpu'"),
    ("--steer-dtype=int8", "--steer-dtype: expected one of auto, float32, bfloat16, float16, got 'int8'"),
    ("--steer-gpus-per-worker=0", "--steer-gpus-per-worker: expected a whole number of at least 1, got '0'"),
])
def test_a_bad_option_value_is_a_usage_error(suite, option: str, fragment: str) -> None:
    write, run = suite
    write()
    result = run(option, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{fragment}*"])


def test_an_input_error_while_running_is_one_message_not_a_traceback(suite, pytester: pytest.Pytester,
                                                                      tiny_model_dir: Path) -> None:
    write, run = suite
    write()
    text = (pytester.path / "steer_tiny.toml").read_text().replace(str(tiny_model_dir), str(pytester.path / "gone"), 1)
    (pytester.path / "steer_tiny.toml").write_text(text)
    result = run("-k", "tinytask", "--steer-update")
    result.assert_outcomes(failed=1, deselected=1)
    out = result.stdout.str()
    assert "tinya-task_vector-tinytask: ModelLoadError: Could not load model 'tinya' (folder: " in out
    assert f"model folder {pytester.path / 'gone'} does not exist" in out
    assert "Traceback" not in out and "raise ModelLoadError" not in out


def test_each_baseline_is_written_when_its_case_is_reported(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    pytester.makeconftest("""
        import json
        from pathlib import Path

        def pytest_runtest_logstart(nodeid, location):
            seen = sorted(str(p) for p in Path("baselines").rglob("*.json"))
            Path("seen.jsonl").open("a").write(json.dumps([nodeid, seen]) + "\\n")
    """)
    run("--steer-update").assert_outcomes(passed=2)
    lines = [json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines()]
    assert [len(seen) for _, seen in lines] == [0, 1]  # the first case's baseline exists before the second starts


def test_one_failing_baseline_write_loses_no_other_case(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    blocker = pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.safetensors"
    blocker.mkdir(parents=True)  # a directory where the vector should go: that one write fails
    result = run("--steer-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*tinya-task_vector-tinytask: baseline not written:*"])
    assert (pytester.path / "baselines" / "tinya" / "task_vector" / "othertask.json").is_file()


def test_a_killed_update_keeps_every_finished_baseline_whole(suite, pytester: pytest.Pytester) -> None:
    """SIGTERM while the second case runs: the first case's pair is on disk, intact, and loads."""
    import signal
    import subprocess
    import sys
    import time

    write, _ = suite
    write()
    pytester.makeconftest("""
        import time

        def pytest_runtest_call(item):
            if "othertask" in item.name:
                time.sleep(120)  # the run is killed here
    """)
    cache = pytester.path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--steer-cache-dir={cache}",
                             "--steer-update"], cwd=pytester.path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.json"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    from pytest_steer.storage.baselines import BaselineStore

    store = BaselineStore(pytester.path / "baselines")
    kept = store.load("tinya", "task_vector", "tinytask")  # verifies the vector against the JSON
    assert kept is not None and kept.id == "tinya-task_vector-tinytask"
    assert store.load("tinya", "task_vector", "othertask") is None
    assert not list((pytester.path / "baselines").rglob("*.tmp"))


def test_compare_with_a_saved_report_lists_changes_and_can_fail_the_run(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    run("--steer-update", "--steer-report=saved.json").assert_outcomes(passed=2)
    result = run("--steer-compare=saved.json", "--steer-compare-fail=0.0")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*compared with *saved.json: no verdict or steered score changed*"])

    saved = json.loads((pytester.path / "saved.json").read_text())
    case = next(c for c in saved["cases"] if c["id"] == "tinya-task_vector-tinytask")
    _every_item_right_before(case["result"])  # the saved run scored higher than this one will
    case["status"] = "xpass"
    (pytester.path / "saved.json").write_text(json.dumps(saved))
    result = run("--steer-compare=saved.json", "--steer-compare-fail=0.1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # every case passed; the drop fails the run
    out = result.stdout.str()
    assert "changes since" in out and "tinya-task_vector-tinytask" in out and "xpass -> pass" in out
    assert "tinya-task_vector-tinytask: steered" in out and "more than --steer-compare-fail 0.1" in out
    assert "tinya-task_vector-othertask" not in out.split("changes since")[1].split("\n\n")[0]
    result = run("--steer-compare=saved.json")  # without a limit the changes are reported, not failed
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read the saved report"),
    ("{not json", "cannot read the saved report"),
    ('{"counts": {}}', "not a pytest-steer report (expected an object with a 'cases' list)"),
])
def test_a_bad_saved_report_is_a_usage_error_naming_it(suite, pytester: pytest.Pytester, content, fragment) -> None:
    write, run = suite
    write()
    if content is not None:
        (pytester.path / "old.json").write_text(content)
    result = run("--steer-compare=old.json", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--steer-compare *old.json: {fragment}*"])
    result = run("--steer-compare-fail=0.1", "--collect-only")
    result.stderr.fnmatch_lines(["*--steer-compare-fail needs --steer-compare PATH*"])


def test_collect_only_names_the_cases_a_task_is_too_small_for(pytester: pytest.Pytester) -> None:
    """One rule per method (README, "Task sizes"), checked without running anything."""
    (pytester.path / "pairs.json").write_text(json.dumps({f"x{i}": f"y{i}" for i in range(130)}))
    (pytester.path / "steer_size.toml").write_text(
        '[tasks.mine]\npath = "pairs.json"\n[[suite]]\nmodels = ["smollm2-135m"]\n'
        'methods = ["function_vector", "task_vector"]\ntasks = ["mine"]\n')
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "*1 case(s) cannot run:*",
        "*smollm2-135m-function_vector-mine: *steer_size.toml: case smollm2-135m-function_vector-mine: *pairs.json has "
        "130 items, but n_dev = 40, n_test = 80 and the 11 demonstrations that function_vector.n_shots = 10 needs make 131",
    ])
    assert "task_vector-mine:" not in result.stdout.str()  # 130 = 40 + 80 + 10 is enough for task vectors


def test_dola_variants_share_one_pass_and_keep_their_own_numbers(suite, pytester: pytest.Pytester,
                                                                  tiny_model_dir: Path) -> None:
    _, run = suite
    quiz = pytester.path / "quiz.json"
    quiz.write_text(json.dumps([
        {"question": f"w{i} w{i + 1}", "best_answer": f"v{i}", "correct_answers": [f"v{i}"],
         "incorrect_answers": [f"w{i + 2}", f"v{i + 3}"]} for i in range(8)]))
    (pytester.path / "steer_dola.toml").write_text(DOLA_FILE.format(model=tiny_model_dir, quiz=quiz))
    run("--steer-update", "--steer-report=together.json", "-n", "2", "--dist", "loadgroup").assert_outcomes(passed=2)
    together = {c["id"]: c for c in _report(pytester.path / "together.json")["cases"]}
    # one pass for both variants (6 items: too few to score in parts), whichever worker took the group first
    assert all(c["result"]["timing_s"].get("shared_by") == 2 for c in together.values())
    for case_id, case in together.items():
        run("-k", case_id.rsplit("-", 1)[-1], "--steer-rerun", "--steer-report=alone.json", "-n", "2")
        (alone,) = _report(pytester.path / "alone.json")["cases"]
        assert "shared_by" not in alone["result"]["timing_s"]
        for key in ("metrics", "per_item", "chosen", "curves", "diagnostics"):
            assert alone["result"][key] == case["result"][key], (case_id, key)
    # without loadgroup the variants may start on two workers at once: one computes both, the other waits and reuses
    import shutil

    shutil.rmtree(pytester.path / "cache" / "results")
    run("--steer-report=load.json", "-n", "2", "--dist", "load").assert_outcomes(passed=2)
    load = _report(pytester.path / "load.json")["cases"]
    assert {c["worker"] for c in load} == {"gw0", "gw1"}
    assert sorted(c["result"]["reused"] for c in load) == [False, True]


SHARED_FILE = """
[defaults]
threshold = -1.0
n_dev = 10
n_test = 12

[methods.task_vector]
n_prompts = 6
n_shots = 3
batch_size = 8

[methods.function_vector]
n_mean_prompts = 4
n_cie_prompts = 3
n_shots = 3
icl_shots = 3
heads = [1, 2]
strengths = [1.0, 4.0]
batch_size = 8

[models.tinya]
path = "{model}"

[tasks.tinytask]
path = "{task}"

[[suite]]
models = ["tinya"]
methods = ["task_vector", "function_vector"]
tasks = ["tinytask"]
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_task_and_function_vectors_share_unsteered_scores_and_keep_their_own_numbers(
    pytester: pytest.Pytester, suite, tiny_model_dir: Path, tiny_task_file: Path, workers: list[str],
) -> None:
    _, run = suite
    (pytester.path / "steer_shared.toml").write_text(SHARED_FILE.format(model=tiny_model_dir, task=tiny_task_file))
    # same test items, demonstrations, shots and batching: the zero-shot and 5-shot test scores are computed once
    run("--steer-update", "--steer-report=together.json", *workers).assert_outcomes(passed=2)
    together = {c["method"]: c["result"] for c in _report(pytester.path / "together.json")["cases"]}
    shared = [r["diagnostics"]["unsteered_shared"] for r in together.values()]
    assert sorted(shared, key=lambda s: s["test"]) == [{"test": False, "icl": False}, {"test": True, "icl": True}]
    assert not (pytester.path / "cache" / "shared").exists() or not any((pytester.path / "cache" / "shared").iterdir())
    for method, result in together.items():
        run("-m", method, "--steer-rerun", "--steer-report=alone.json", *workers).assert_outcomes(passed=1)
        (alone,) = _report(pytester.path / "alone.json")["cases"]
        assert alone["result"]["diagnostics"]["unsteered_shared"] == {"test": False, "icl": False}
        for key in ("metrics", "per_item", "chosen", "curves"):
            assert alone["result"][key] == result[key], (method, key)


def test_scores_are_not_shared_when_the_batching_differs(pytester: pytest.Pytester, suite, tiny_model_dir: Path,
                                                         tiny_task_file: Path) -> None:
    _, run = suite
    text = SHARED_FILE.format(model=tiny_model_dir, task=tiny_task_file).replace("batch_size = 8\n\n[models", "batch_size = 4\n\n[models")
    (pytester.path / "steer_shared.toml").write_text(text)
    run("--steer-update", "--steer-report=r.json").assert_outcomes(passed=2)
    shared = [c["result"]["diagnostics"]["unsteered_shared"] for c in _report(pytester.path / "r.json")["cases"]]
    assert shared == [{"test": False, "icl": False}] * 2


def test_a_drop_only_the_run_correction_rejects_fails_the_run_and_its_report(suite, pytester: pytest.Pytester) -> None:
    """Two scores each lose 6 of 12 items (McNemar p = 0.031): above what one case decides alone (0.05 / 3), below
    what Benjamini-Hochberg rejects over the run's comparisons (2 x 0.05 / 3): the case passes while it runs, the
    run's end fails it."""
    write, run = suite
    write()
    run("--steer-update", "-k", "tinytask").assert_outcomes(passed=1, deselected=1)
    stored = pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.json"
    data = json.loads(stored.read_text())
    for score, metric in (("unsteered", "unsteered"), ("icl", "icl")):
        values = data["per_item"][score]
        zeros = [i for i, v in enumerate(values) if v == 0]
        assert len(zeros) >= 6, (score, values)
        for i in zeros[:6]:
            values[i] = 1.0
        data["metrics"][metric] = sum(values) / len(values)
    data["metrics"]["delta"] = data["metrics"]["steered"] - data["metrics"]["unsteered"]
    stored.write_text(json.dumps(data))
    report = pytester.path / "late.json"
    result = run("-k", "tinytask", "--steer-multiple=bh", "--steer-tolerance=0", f"--steer-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, deselected=1)  # the case itself could not decide
    out = result.stdout.str()
    assert "3 paired comparison(s), Benjamini-Hochberg-corrected (false discovery rate 0.05): 2 regression(s), " \
           "1 found only by the correction: tinya-task_vector-tinytask" in out
    assert "FAILED tinya-task_vector-tinytask: regression after the run's bh correction over 3 comparisons" in out
    case = _report(report)["cases"][0]
    assert case["status"] == "fail" and case["verdict"]["baseline"] == "regressed" and not case["verdict"]["passed"]
    # Holm, the default, holds the family-wise rate: 0.031 > 0.05 / 3, so nothing is rejected
    result = run("-k", "tinytask", "--steer-tolerance=0")
    assert result.ret == pytest.ExitCode.OK
    assert "3 paired comparison(s), Holm-corrected (family-wise alpha 0.05): 0 regression(s)" in result.stdout.str()


def test_a_negative_compare_fail_is_a_usage_error(suite) -> None:
    write, run = suite
    write()
    result = run("--steer-compare=saved.json", "--steer-compare-fail=-0.2", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--steer-compare-fail: expected a number >= 0 (a drop), got '-0.2'*"])


@pytest.mark.parametrize("target, fragment", [
    ("folder", "is a folder"),
    ("/dev/null", "not a regular file"),
    ("fifo", "not a regular file"),
    ("no-such-folder/report.json", "does not exist"),
    ("loop/report.json", "not a usable path"),
], ids=["folder", "device-node", "fifo", "missing-parent", "symlink-loop"])
@pytest.mark.parametrize("option", ["--steer-report", "--steer-html"])
def test_an_output_that_cannot_be_a_regular_file_is_refused_before_any_case_runs(
        suite, pytester: pytest.Pytester, option: str, target: str, fragment: str) -> None:
    import os

    write, run = suite
    write()
    (pytester.path / "folder").mkdir()
    os.mkfifo(pytester.path / "fifo")
    (pytester.path / "loop").symlink_to(pytester.path / "loop")
    path = target if target.startswith("/") else str(pytester.path / target)
    result = run(f"{option}={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option} *{fragment}*"])
    assert "steer: start" not in result.stdout.str()
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_a_killed_worker_leaves_a_report_that_says_it_is_incomplete(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    pytester.makeconftest("""
        import os

        def pytest_runtest_call(item):
            if "othertask" in item.name:
                os._exit(9)  # as kill -9 would
    """)
    report = pytester.path / "report.json"
    result = run("-n", "2", "--steer-update", f"--steer-report={report}")
    assert result.ret != 0
    data = _report(report)
    assert data["complete"] is False and data["unfinished"] == ["tinya-task_vector-othertask"]
    assert [c["id"] for c in data["cases"]] == ["tinya-task_vector-tinytask"]
    result.stdout.fnmatch_lines(["*1 selected case(s) unfinished*tinya-task_vector-othertask*",
                                 "*report written: *report.json (incomplete: 1 case(s) unfinished*"])
    from pytest_steer.report.merge import main

    assert main([str(report), "-o", str(pytester.path / "merged.json")]) != 0  # merge refuses it
    assert not (pytester.path / "merged.json").exists()


def test_a_run_killed_outright_leaves_a_report_marked_unfinished(suite, pytester: pytest.Pytester) -> None:
    """Even SIGKILL of the whole run (no chance to write anything at the end) leaves no complete-looking report."""
    import subprocess
    import sys
    import time

    write, _ = suite
    write()
    report = pytester.path / "report.json"
    report.write_text(json.dumps({"complete": True, "unfinished": [], "cases": [], "counts": {}}))  # an old run's
    pytester.makeconftest("""
        import time

        def pytest_runtest_call(item):
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             f"--steer-cache-dir={pytester.path / 'cache'}", f"--steer-report={report}"],
                            cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _report(report).get("complete") is not False and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=60)
    data = _report(report)
    assert data["complete"] is False and data["state"] == "running" and data["cases"] == []


def test_a_complete_run_says_so(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    report = pytester.path / "report.json"
    run("--steer-update", f"--steer-report={report}").assert_outcomes(passed=2)
    data = _report(report)
    assert data["complete"] is True and data["unfinished"] == [] and "state" not in data
    assert len(data["cases"]) == 2


def test_a_read_only_cache_on_a_miss_computes_in_memory_with_the_same_numbers(suite, pytester: pytest.Pytester) -> None:
    """A team cache this user may read but not write (simulated: root ignores modes): every write under it
    fails as a read-only mount would, and the run still computes, judges and reports."""
    write, run = suite
    write()
    report = pytester.path / "first.json"
    run("--steer-update", f"--steer-report={report}").assert_outcomes(passed=2)
    pytester.makeconftest(f"""
        import errno, os

        CACHE = {str(pytester.path / 'cache')!r}
        _open, _mkdir = os.open, os.mkdir

        def _read_only(path):
            return os.path.abspath(os.fspath(path)).startswith(CACHE)

        def ro_open(path, flags, *args, **kwargs):
            if _read_only(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
            return _open(path, flags, *args, **kwargs)

        def ro_mkdir(path, *args, **kwargs):
            if _read_only(path) and not os.path.isdir(path):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
            return _mkdir(path, *args, **kwargs)

        os.open, os.mkdir = ro_open, ro_mkdir
    """)
    before = {p: p.stat().st_mtime_ns for p in (pytester.path / "cache").rglob("*") if p.is_file()}
    again = pytester.path / "again.json"
    result = run("--steer-rerun", f"--steer-report={again}")
    result.assert_outcomes(passed=2)
    after = {p: p.stat().st_mtime_ns for p in (pytester.path / "cache").rglob("*") if p.is_file()}
    assert after == before  # nothing under the cache was written
    first = {c["id"]: c["result"] for c in _report(report)["cases"]}
    for case in _report(again)["cases"]:
        assert case["result"]["per_item"] == first[case["id"]]["per_item"]
        assert case["result"]["metrics"] == first[case["id"]]["metrics"]


def test_a_cache_whose_folders_are_symlink_loops_still_judges_every_case(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    run("--steer-update").assert_outcomes(passed=2)
    cache = pytester.path / "loops"
    cache.mkdir()
    for name in ("results", "vectors", "accepted", "shared", "fingerprints", "models"):
        (cache / name).symlink_to(cache / name)  # each one a loop onto itself
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--steer-cache-dir={cache}", "--steer-device=cpu")
    result.assert_outcomes(passed=2)


def test_an_edit_of_the_plugins_code_invalidates_stored_results_and_cached_vectors(suite,
                                                                                   pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    report = pytester.path / "r.json"

    def outcomes() -> tuple[set[bool], set[bool], set[str]]:
        results = [c["result"] for c in _report(report)["cases"]]
        return ({r["reused"] for r in results}, {r["diagnostics"]["cache"]["hit"] for r in results},
                {r["diagnostics"]["cache"]["path"] for r in results})

    run("--steer-update", f"--steer-report={report}").assert_outcomes(passed=2)
    run("--steer-rerun", f"--steer-report={report}").assert_outcomes(passed=2)
    reused, hits, paths = outcomes()
    assert reused == {False} and hits == {True}  # results recomputed on request, vectors reused
    pytester.makeconftest("""
        import pytest_steer.storage.identity as identity

        identity.plugin_source_hash = lambda: "0123456789abcdef"  # as after an edit of a built-in's extraction
    """)
    run(f"--steer-report={report}").assert_outcomes(passed=2)
    reused, hits, edited = outcomes()
    assert reused == {False}  # no stored result is used
    assert False in hits and not edited & paths  # nor any cached vector: each is extracted anew, under new keys


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_held_back_large_case_is_neither_unfinished_nor_stale(suite, pytester: pytest.Pytester,
                                                                workers: list[str]) -> None:
    """A case of the large profile is not run unless -m names it; the run is still complete (under xdist too)."""
    write, run = suite
    write(models='["tinya"]', extra='\n[[case]]\ntask = "othertask"\nprofile = "large"\n')
    result = run(*workers, "--steer-update", "--steer-report=r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    report = _report(pytester.path / "r.json")
    assert report["complete"] is True and report["unfinished"] == []
    assert "case(s) unfinished" not in result.stdout.str()
    result = run(*workers, "-m", "large", "--steer-update")
    result.assert_outcomes(passed=1)  # selected by its profile's marker
    result = run(*workers, "--steer-report=r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK and "not used by any selected case" not in result.stdout.str()


SLOW_PARTS = """
import os
import time
from pathlib import Path

from pytest_steer.methods.dola import DolaMethod

_score = DolaMethod.run_part


def _both_workers_in(self, *args, **kwargs):
    # in the -n 2 run, a worker's part waits until the other worker is scoring too (at most a minute)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get("STEER_TEST_BARRIER"):
        (Path.cwd() / f"in-{worker}").touch()
        deadline = time.time() + 60
        while len(list(Path.cwd().glob("in-gw*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    return _score(self, *args, **kwargs)


DolaMethod.run_part = _both_workers_in
"""


def test_two_workers_share_a_dola_split_in_parts_with_the_numbers_of_one_pass(
        suite, pytester: pytest.Pytester, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DoLa group is not an indivisible unit: its variants go to both workers, which score parts of the split
    in turn; each variant's numbers are those of a serial run, and the parts are of every item once."""
    _, run = suite
    quiz = pytester.path / "quiz.json"
    quiz.write_text(json.dumps([
        {"question": f"w{i} w{i + 1}", "best_answer": f"v{i}", "correct_answers": [f"v{i}"],
         "incorrect_answers": [f"w{i + 2}", f"v{i + 3}"]} for i in range(40)]))
    (pytester.path / "steer_dola.toml").write_text(
        DOLA_FILE.replace("n_test = 6", "n_test = 32").format(model=tiny_model_dir, quiz=quiz))
    (pytester.path / "conftest.py").write_text(SLOW_PARTS)
    run("--steer-update", "--steer-report=serial.json").assert_outcomes(passed=2)
    monkeypatch.setenv("STEER_TEST_BARRIER", "1")
    run("--steer-rerun", "--steer-report=xdist.json", "-n", "2", "--dist", "loadgroup").assert_outcomes(passed=2)
    serial = {c["id"]: c for c in _report(pytester.path / "serial.json")["cases"]}
    xdist = {c["id"]: c for c in _report(pytester.path / "xdist.json")["cases"]}
    assert {c["worker"] for c in xdist.values()} == {"gw0", "gw1"}  # the group's variants went to both workers
    for case_id, case in xdist.items():
        parts = case["result"]["diagnostics"]["parts"]
        assert parts["count"] == 4 and sum(parts["by"].values()) == 4
        assert set(parts["by"]) == {"gw0", "gw1"}, parts  # both scored parts of the one split
        assert serial[case_id]["result"]["diagnostics"]["parts"] == {"count": 4, "by": {"master": 4}}
        for key in ("metrics", "per_item", "chosen", "curves"):
            assert case["result"][key] == serial[case_id]["result"][key], (case_id, key)
    stored = json.loads((pytester.path / "baselines" / "tiny" / "dola" / "quiz-lower.json").read_text())
    assert stored["per_item"] == xdist["tiny-dola-quiz-lower"]["result"]["per_item"]
