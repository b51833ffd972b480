"""Tests for pytest_steer.cases.casefile: expanding TOML case files into cases, and their errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_steer.cases.casefile import (
    BrokenCase,
    Case,
    case_id,
    load_case_file,
    marker_name,
    model_family,
)
from pytest_steer.models.packaged import PACKAGED_MODELS
from pytest_steer.tasks import BUILTIN_DIR

SUITE = """
[[suite]]
models = ["smollm2-135m", "gemma3-270m"]
methods = ["task_vector"]
tasks = ["antonym", "capitalize"]
"""


def write(tmp_path: Path, text: str, name: str = "steer_x.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_ok(path: Path) -> list[Case]:
    items = load_case_file(path)
    broken = [i for i in items if isinstance(i, BrokenCase)]
    assert not broken, [b.message for b in broken]
    return items  # type: ignore[return-value]


def load_single_broken(path: Path) -> BrokenCase:
    items = load_case_file(path)
    assert len(items) == 1 and isinstance(items[0], BrokenCase), items
    assert items[0].source == path
    return items[0]


def by_id(items):
    return {i.id: i for i in items}


# ---------------------------------------------------------------- expansion


def test_suite_expands_models_outer(tmp_path):
    path = write(tmp_path, SUITE)
    cases = load_ok(path)
    assert [c.id for c in cases] == [
        "smollm2-135m-task_vector-antonym",
        "smollm2-135m-task_vector-capitalize",
        "gemma3-270m-task_vector-antonym",
        "gemma3-270m-task_vector-capitalize",
    ]
    for c in cases:
        assert isinstance(c, Case)
        assert c.method == "task_vector"
        assert c.model.kind == "packaged"
        assert c.model.location == c.model.name
        assert c.source == path
        assert c.task_path == BUILTIN_DIR / f"{c.task}.json"
        assert c.id == case_id(c.model.name, c.method, c.task)


def test_defaults_and_method_settings_apply(tmp_path):
    path = write(
        tmp_path,
        """
        [defaults]
        threshold = 0.2
        n_dev = 12
        n_test = 30
        seed = 5
        gate = "ci_low"

        [methods.task_vector]
        n_prompts = 7
        n_shots = 3
        layers = [1, 2]
        """
        + SUITE,
    )
    for c in load_ok(path):
        assert c.options.threshold == 0.2
        assert c.options.n_dev == 12 and c.options.n_test == 30 and c.options.seed == 5
        assert c.options.gate == "ci_low"
        assert c.options.expect == "pass"
        assert c.settings.n_prompts == 7 and c.settings.n_shots == 3
        assert c.settings.layers == (1, 2)


def test_unset_options_keep_dataclass_defaults(tmp_path):
    c = load_ok(write(tmp_path, SUITE))[0]
    assert c.options.threshold is None and c.options.tolerance is None and c.options.min_recovery is None
    assert c.options.gate == "mean" and c.options.expect == "pass"
    assert c.settings.n_prompts == 30  # TaskVectorSettings default


def test_case_override_applies_only_to_matching_cases(tmp_path):
    path = write(
        tmp_path,
        """
        [defaults]
        threshold = 0.1

        [methods.task_vector]
        n_shots = 4
        """
        + SUITE
        + """
        [[case]]
        model = "gemma3-270m"
        task = "capitalize"
        threshold = 0.5
        expect = "fail"
        reason = "too small for this task"
        settings = { n_shots = 2 }
        """,
    )
    cases = by_id(load_ok(path))
    target = cases["gemma3-270m-task_vector-capitalize"]
    assert target.options.threshold == 0.5
    assert target.options.expect == "fail"
    assert target.options.reason == "too small for this task"
    assert target.settings.n_shots == 2
    for cid, c in cases.items():
        if cid == target.id:
            continue
        assert c.options.threshold == 0.1
        assert c.options.expect == "pass"
        assert c.options.reason == ""
        assert c.settings.n_shots == 4


def test_override_by_task_only_matches_every_model(tmp_path):
    path = write(tmp_path, SUITE + '\n[[case]]\ntask = "antonym"\nthreshold = 0.3\n')
    cases = load_ok(path)
    assert {c.id for c in cases if c.options.threshold == 0.3} == {
        "smollm2-135m-task_vector-antonym",
        "gemma3-270m-task_vector-antonym",
    }


def test_duplicate_combinations_are_expanded_once(tmp_path):
    path = write(tmp_path, SUITE + SUITE)
    assert len(load_ok(path)) == 4


def test_single_string_names_accepted(tmp_path):
    path = write(tmp_path, '[[suite]]\nmodels = "smollm2-135m"\nmethods = "task_vector"\ntasks = "antonym"\n')
    assert [c.id for c in load_ok(path)] == ["smollm2-135m-task_vector-antonym"]


# ---------------------------------------------------------------- custom models and tasks


def test_custom_model_sources_and_task_path(tmp_path):
    sub = tmp_path / "cases"
    (sub / "data").mkdir(parents=True)
    (sub / "data" / "mytask.json").write_text(json.dumps({f"x{i}": f"y{i}" for i in range(140)}))
    path = write(
        sub,
        """
        [models.mine]
        path = "relative/dir"

        [models.fromhub]
        hub = "org/some-model"
        revision = "abc123"

        [models.quant]
        gguf = "weights/model.Q4.gguf"

        [models.absolute]
        path = "/opt/models/abs"

        [tasks.mytask]
        path = "data/mytask.json"

        [[suite]]
        models = ["mine", "fromhub", "quant", "absolute"]
        methods = ["task_vector"]
        tasks = ["mytask"]
        """,
    )
    cases = {c.model.name: c for c in load_ok(path)}
    mine = cases["mine"].model
    assert mine.kind == "folder"
    assert Path(mine.location) == (sub / "relative" / "dir").resolve()
    hub = cases["fromhub"].model
    assert (hub.kind, hub.location, hub.revision) == ("hub", "org/some-model", "abc123")
    quant = cases["quant"].model
    assert quant.kind == "gguf"
    assert Path(quant.location) == (sub / "weights" / "model.Q4.gguf").resolve()
    assert cases["absolute"].model.location == "/opt/models/abs"
    for c in cases.values():
        assert c.task == "mytask"
        assert c.task_path == (sub / "data" / "mytask.json").resolve()


def test_task_folder_next_to_case_file_wins(tmp_path):
    (tmp_path / "tasks").mkdir()
    local = tmp_path / "tasks" / "antonym.json"
    local.write_text(json.dumps({f"a{i}": f"b{i}" for i in range(140)}), encoding="utf-8")
    path = write(tmp_path, '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["task_vector"]\ntasks = ["antonym", "capitalize"]\n')
    cases = by_id(load_ok(path))
    assert cases["smollm2-135m-task_vector-antonym"].task_path == local
    assert cases["smollm2-135m-task_vector-capitalize"].task_path == BUILTIN_DIR / "capitalize.json"


def test_revision_on_non_hub_model_rejected(tmp_path):
    path = write(tmp_path, '[models.mine]\npath = "d"\nrevision = "x"\n[[suite]]\nmodels = ["mine"]\nmethods = ["task_vector"]\ntasks = ["antonym"]\n')
    (item,) = load_case_file(path)
    assert isinstance(item, BrokenCase)
    assert str(path) in item.message and "revision" in item.message


# ---------------------------------------------------------------- file-level errors


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, "[defaults\nthreshold = 0.1\n")
    broken = load_single_broken(path)
    assert str(path) in broken.message
    assert broken.id == "steer_x-invalid"


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, SUITE + "\n[extras]\nfoo = 1\n")
    broken = load_single_broken(path)
    assert str(path) in broken.message
    assert "unknown top-level key 'extras'" in broken.message


def test_suite_missing_tasks(tmp_path):
    path = write(tmp_path, '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["task_vector"]\n')
    broken = load_single_broken(path)
    assert str(path) in broken.message
    assert "suite[0]" in broken.message and "missing field 'tasks'" in broken.message


def test_no_suite(tmp_path):
    path = write(tmp_path, "[defaults]\nseed = 1\n")
    broken = load_single_broken(path)
    assert str(path) in broken.message and "suite" in broken.message


def test_wrong_type_in_defaults(tmp_path):
    path = write(tmp_path, '[defaults]\nthreshold = "high"\n' + SUITE)
    items = _broken_all(path)  # every case fails under its own id, so selection and the report still name it
    assert sorted(i.id for i in items) == sorted(c.id for c in load_ok(write(tmp_path, SUITE, "steer_ok.toml")))
    broken = items[0]
    assert str(path) in broken.message
    assert "[defaults]" in broken.message
    assert "threshold" in broken.message
    assert "expected a number" in broken.message


def test_unknown_method_table(tmp_path):
    path = write(tmp_path, "[methods.steer_caa]\nalpha = 1\n" + SUITE)
    broken = load_single_broken(path)
    assert str(path) in broken.message and "steer_caa" in broken.message and "unknown method" in broken.message


def test_case_selector_matching_nothing(tmp_path):
    path = write(tmp_path, SUITE + '\n[[case]]\nmodel = "gemma3-270m"\ntask = "english-french"\nthreshold = 0.3\n')
    broken = load_single_broken(path)
    assert str(path) in broken.message
    assert "case[0]" in broken.message and "matches no case" in broken.message
    assert "english-french" in broken.message


def test_case_without_selector(tmp_path):
    path = write(tmp_path, SUITE + "\n[[case]]\nthreshold = 0.3\n")
    broken = load_single_broken(path)
    assert str(path) in broken.message and "case[0]" in broken.message


def test_expect_maybe_rejected_in_defaults(tmp_path):
    path = write(tmp_path, '[defaults]\nexpect = "maybe"\n' + SUITE)
    broken = _broken_all(path)[0]
    assert str(path) in broken.message and "expect" in broken.message and "'maybe'" in broken.message


# ---------------------------------------------------------------- per-case errors


def _broken_all(path: Path) -> list[BrokenCase]:
    items = load_case_file(path)
    assert items and all(isinstance(i, BrokenCase) for i in items), items
    for item in items:
        assert str(path) in item.message
    return items  # type: ignore[return-value]


def test_unknown_model_lists_aliases(tmp_path):
    path = write(tmp_path, '[[suite]]\nmodels = ["nosuch-model"]\nmethods = ["task_vector"]\ntasks = ["antonym"]\n')
    (broken,) = _broken_all(path)
    assert broken.id == "nosuch-model-task_vector-antonym"
    assert "unknown model 'nosuch-model'" in broken.message
    for alias in PACKAGED_MODELS:
        assert alias in broken.message
    assert "[models.nosuch-model]" in broken.message


def test_unknown_method_in_suite(tmp_path):
    path = write(tmp_path, '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["mimic"]\ntasks = ["antonym"]\n')
    (broken,) = _broken_all(path)
    assert "unknown method 'mimic'" in broken.message and "task_vector" in broken.message and "dola" in broken.message
    assert broken.method == "mimic"


def test_unknown_task(tmp_path):
    path = write(tmp_path, '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["task_vector"]\ntasks = ["nosuch-task"]\n')
    (broken,) = _broken_all(path)
    assert "unknown task 'nosuch-task'" in broken.message
    assert broken.task == "nosuch-task"


def test_unknown_setting_in_method_table(tmp_path):
    path = write(tmp_path, "[methods.task_vector]\nn_shotz = 3\n" + SUITE)
    broken = _broken_all(path)
    assert len(broken) == 4
    for b in broken:
        assert "n_shotz" in b.message and "unknown setting" in b.message


def test_wrong_type_in_method_table(tmp_path):
    path = write(tmp_path, '[methods.task_vector]\nn_shots = "five"\n' + SUITE)
    for b in _broken_all(path):
        assert "n_shots" in b.message and "expected an integer" in b.message


def test_expect_maybe_rejected_in_case_override(tmp_path):
    path = write(tmp_path, SUITE + '\n[[case]]\ntask = "antonym"\nexpect = "maybe"\n')
    items = by_id(load_case_file(path))
    for cid, item in items.items():
        if cid.endswith("-antonym"):
            assert isinstance(item, BrokenCase)
            assert str(path) in item.message and "expect" in item.message and "'maybe'" in item.message
        else:
            assert isinstance(item, Case)


def test_bad_case_does_not_break_others(tmp_path):
    path = write(
        tmp_path,
        """
        [[suite]]
        models = ["smollm2-135m"]
        methods = ["task_vector"]
        tasks = ["antonym", "capitalize"]

        [[suite]]
        models = ["smollm2-135m"]
        methods = ["task_vector"]
        tasks = ["no-such-task"]
        """,
    )
    items = by_id(load_case_file(path))
    assert list(items) == [
        "smollm2-135m-task_vector-antonym",
        "smollm2-135m-task_vector-capitalize",
        "smollm2-135m-task_vector-no-such-task",
    ]
    assert isinstance(items["smollm2-135m-task_vector-antonym"], Case)
    assert isinstance(items["smollm2-135m-task_vector-capitalize"], Case)
    bad = items["smollm2-135m-task_vector-no-such-task"]
    assert isinstance(bad, BrokenCase)
    assert str(path) in bad.message and "suite[1]" in bad.message and "no-such-task" in bad.message


def test_invalid_name_characters(tmp_path):
    path = write(tmp_path, '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["task_vector"]\ntasks = ["bad name"]\n')
    (broken,) = _broken_all(path)
    assert "task name 'bad name'" in broken.message


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "text, expected",
    [
        ("qwen2.5-coder-0.5b", "qwen2_5_coder_0_5b"),
        ("smollm2-135m", "smollm2_135m"),
        ("Gemma3-270M", "gemma3_270m"),
        ("task_vector", "task_vector"),
        ("country-capital", "country_capital"),
        ("-x-", "x"),
        ("7b-model", "m_7b_model"),
    ],
)
def test_marker_name(text, expected):
    assert marker_name(text) == expected


@pytest.mark.parametrize(
    "name, family",
    [
        ("smollm2-135m", "smollm"),
        ("gemma3-270m", "gemma"),
        ("qwen2.5-coder-0.5b", "qwen"),
        ("Qwen2.5-Coder-1.5B", "qwen"),
        ("llama-3.2-1b", "llama"),
        ("gpt2", "gpt2"),
        ("mine", None),
        ("my-llama", None),
    ],
)
def test_model_family(name, family):
    assert model_family(name) == family


# ---------------------------------------------------------------- variants

VARIANTS = """
[methods.dola]
alpha = 0.2

[[suite]]
models = ["smollm2-135m"]
methods = ["dola"]
tasks = ["truthful-mc", "fact-completion"]
variant = "lower"
settings = { bucket = "lower" }

[[suite]]
models = ["smollm2-135m"]
methods = ["dola"]
tasks = ["truthful-mc"]
variant = "upper"
settings = { bucket = "upper", post_softmax = false }
"""


def test_variants_join_the_id_and_carry_their_settings(tmp_path):
    cases = by_id(load_ok(write(tmp_path, VARIANTS)))
    assert set(cases) == {
        "smollm2-135m-dola-truthful-mc-lower", "smollm2-135m-dola-fact-completion-lower", "smollm2-135m-dola-truthful-mc-upper",
    }
    lower, upper = cases["smollm2-135m-dola-truthful-mc-lower"], cases["smollm2-135m-dola-truthful-mc-upper"]
    assert (lower.variant, lower.slot, lower.task) == ("lower", "truthful-mc-lower", "truthful-mc")
    assert (lower.settings.bucket, lower.settings.alpha, lower.settings.post_softmax) == ("lower", 0.2, True)
    assert (upper.settings.bucket, upper.settings.alpha, upper.settings.post_softmax) == ("upper", 0.2, False)


def test_case_override_can_select_a_variant(tmp_path):
    text = VARIANTS + '\n[[case]]\nvariant = "upper"\nthreshold = 0.25\nsettings = { alpha = 0.5 }\n'
    cases = by_id(load_ok(write(tmp_path, text)))
    upper = cases["smollm2-135m-dola-truthful-mc-upper"]
    assert upper.options.threshold == 0.25 and upper.settings.alpha == 0.5
    assert all(c.options.threshold is None for cid, c in cases.items() if cid.endswith("-lower"))


def test_suite_settings_without_variant_rejected(tmp_path):
    text = '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["dola"]\ntasks = ["truthful-mc"]\nsettings = { bucket = "upper" }\n'
    broken = load_single_broken(write(tmp_path, text))
    assert "suite[0].settings" in broken.message and "variant" in broken.message


def test_two_suites_disagreeing_on_one_case_rejected(tmp_path):
    text = VARIANTS.replace('variant = "upper"', 'variant = "lower"')
    broken = load_single_broken(write(tmp_path, text))
    assert "smollm2-135m-dola-truthful-mc-lower" in broken.message and "suite[0]" in broken.message
    assert "suite[1]" in broken.message


def test_bad_variant_name_and_bad_variant_setting(tmp_path):
    items = load_case_file(write(tmp_path, VARIANTS.replace('variant = "upper"', 'variant = "up per"')))
    broken = [i for i in items if isinstance(i, BrokenCase)]
    assert [b.id for b in broken] == ["steer_x-suite1-invalid"]  # only the broken suite fails
    assert "suite[1].variant" in broken[0].message and "'up per'" in broken[0].message
    assert len(items) == 3 and sum(isinstance(i, Case) for i in items) == 2
    items = load_case_file(write(tmp_path, VARIANTS.replace('bucket = "upper"', 'bucket = "middle"')))
    bad = [i for i in items if isinstance(i, BrokenCase)]
    assert [b.id for b in bad] == ["smollm2-135m-dola-truthful-mc-upper"]
    assert "bucket" in bad[0].message and "'middle'" in bad[0].message and "lower" in bad[0].message
    assert len(items) == 3  # the other cases still build


def test_case_id_of_a_variant():
    assert case_id("m", "dola", "truthful-mc-lower") == "m-dola-truthful-mc-lower"


def test_model_opt_ins_for_remote_code_and_pickles_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "steer_optin.toml"
    path.write_text(textwrap.dedent("""
        [models.mine]
        path = "weights"
        trust_remote_code = true
        allow_pickle = true
        [[suite]]
        models = ["mine"]
        methods = ["task_vector"]
        tasks = ["antonym"]
    """))
    (case,) = load_case_file(path)
    assert case.model.trust_remote_code and case.model.allow_pickle
    path.write_text(path.read_text().replace("allow_pickle = true", 'allow_pickle = "yes"'))
    (broken,) = load_case_file(path)
    assert isinstance(broken, BrokenCase)
    assert str(path) in broken.message and "[models.mine].allow_pickle: expected true or false, got 'yes'" in broken.message


def test_a_task_named_like_a_variant_cannot_take_another_cases_id(tmp_path: Path) -> None:
    path = tmp_path / "steer_clash.toml"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "antonym-upper.json").write_text('{"a": "b"}')
    path.write_text(textwrap.dedent("""
        [[suite]]
        models = ["smollm2-135m"]
        methods = ["task_vector"]
        tasks = ["antonym"]
        variant = "upper"

        [[suite]]
        models = ["smollm2-135m"]
        methods = ["task_vector"]
        tasks = ["antonym-upper"]
    """))
    (broken,) = load_case_file(path)
    assert isinstance(broken, BrokenCase)
    for part in (str(path), "suite[1]", "suite[0]", "smollm2-135m-task_vector-antonym-upper", "'antonym-upper'"):
        assert part in broken.message, part


def _pairs_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({f"x{i}": f"y{i}" for i in range(n)}))
    return path


@pytest.mark.parametrize(
    "n_items, extra, fragment",
    [
        (99, "", "has 99 items, but n_dev = 40, n_test = 80 and the 11 demonstrations that function_vector.n_shots = 10 needs make 131"),
        (130, "", "has 130 items, but n_dev = 40, n_test = 80 and the 11 demonstrations"),
        (200, "[methods.function_vector]\nicl_shots = 100\n", "the 101 demonstrations that function_vector.icl_shots = 100 needs make 221"),
    ],
)
def test_a_pool_too_small_for_the_method_fails_at_collection(tmp_path: Path, n_items: int, extra: str, fragment: str) -> None:
    task = _pairs_file(tmp_path, n_items)
    path = write(tmp_path, f"""
        [tasks.mine]
        path = "{task}"
        {extra}
        [[suite]]
        models = ["smollm2-135m"]
        methods = ["function_vector"]
        tasks = ["mine"]
    """.replace("\\n", "\n"))
    (broken,) = load_case_file(path)
    assert isinstance(broken, BrokenCase)
    assert str(path) in broken.message and str(task) in broken.message and fragment in broken.message


def test_a_task_of_the_wrong_kind_fails_at_collection(tmp_path: Path) -> None:
    task = _pairs_file(tmp_path, 200)
    path = write(tmp_path, f"""
        [tasks.mine]
        path = "{task}"
        [[suite]]
        models = ["smollm2-135m"]
        methods = ["dola"]
        tasks = ["mine"]
    """)
    (broken,) = load_case_file(path)
    assert isinstance(broken, BrokenCase) and "holds pairs items; dola needs mc or completion items" in broken.message


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("tolerance = nan", "[defaults].tolerance: expected a finite number, got nan"),
        ("threshold = inf", "[defaults].threshold: expected a finite number, got inf"),
        ("min_recovery = -inf", "[defaults].min_recovery: expected a finite number, got -inf"),
        ("seed = -1", "[defaults].seed: must be >= 0, got -1"),
    ],
)
def test_non_finite_numbers_and_negative_seeds_are_rejected(tmp_path: Path, line: str, fragment: str) -> None:
    path = write(tmp_path, f"[defaults]\n{line}\n" + SUITE)
    items = load_case_file(path)
    assert all(isinstance(i, BrokenCase) for i in items)
    assert str(path) in items[0].message and fragment in items[0].message


@pytest.mark.parametrize("setting, fragment", [
    ("layers = []", "settings of smollm2-135m-task_vector-antonym.layers: expected a non-empty list of layer indices >= 0"),
    ("n_shots = 200", "the 201 demonstrations that task_vector.n_shots = 200 needs make 321"),
])
def test_method_settings_that_cannot_run_fail_at_collection(tmp_path: Path, setting: str, fragment: str) -> None:
    path = write(tmp_path, f"[methods.task_vector]\n{setting}\n" + SUITE)
    items = load_case_file(path)
    assert items and all(isinstance(i, BrokenCase) for i in items)
    assert str(path) in items[0].message and fragment in items[0].message


@pytest.mark.parametrize("field", ["n_dev", "n_test"])
def test_a_split_size_below_one_names_its_field(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, f"[defaults]\n{field} = 0\n" + SUITE)
    broken = _broken_all(path)[0]
    assert str(path) in broken.message and f"[defaults].{field}: must be at least 1, got 0" in broken.message
