"""A probe of malformed inputs and faults, each run through the plugin's own readers and writers.

    python bench/trust_probe.py [--only CLASS]

Each probe builds one input in a scratch folder (a model folder, a case file, a task file, a baseline, a
report, a cache entry, an output path) and feeds it to the function a run would call. The outcome is one of:

    error     the plugin's own error, naming the file or option (what a user should see)
    held      a fault the plugin handled without an error (a moved fingerprint, a rebuilt cache entry)
    unclear   the plugin's own error, but its message names neither the file nor the field
    accepted  a valid record came back (right for valid inputs, e.g. a CSV with a BOM)
    SILENT    a record came back for an input that should have been refused
    CRASH     any other exception (a traceback a user would see)

Exits 1 if any probe is SILENT or CRASH or gives `unclear`. The inputs here are not those of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_steer.storage.baselines import BaselineStore  # noqa: E402
from pytest_steer.cases.casefile import BrokenCase, CaseFileError, load_case_file  # noqa: E402
from pytest_steer.judge.compare import CompareError, load_saved  # noqa: E402
from pytest_steer.storage.files import StoreError, check_output  # noqa: E402
from pytest_steer.report.merge import MergeError, load_shard  # noqa: E402
from pytest_steer.models.loader import ModelLoadError  # noqa: E402
from pytest_steer.models.fingerprint import FingerprintError, model_fingerprint  # noqa: E402
from pytest_steer.tasks import TaskError  # noqa: E402
from pytest_steer.tasks.data import load_task  # noqa: E402

class Held(Exception):
    """Raised by a probe whose fault the plugin handled as it should, with no error of its own to show."""


OWN_ERRORS = (CaseFileError, TaskError, StoreError, CompareError, MergeError, FingerprintError, ModelLoadError)


@dataclass
class Probe:
    name: str
    kind: str  # the class of input
    run: Callable[[Path], object]  # returns the record, or raises
    valid: bool = False  # a valid input: acceptance is right
    names: tuple[str, ...] = ()  # what a clear message must contain (one of them); default: the file's name


PROBES: list[Probe] = []


def probe(kind: str, valid: bool = False, names: tuple[str, ...] = ()) -> Callable[[Callable[[Path], object]], None]:
    def add(fn: Callable[[Path], object]) -> None:
        PROBES.append(Probe(fn.__name__, kind, fn, valid, names))
    return add


# ------------------------------------------------------------------ fixtures built once
def tiny_model(folder: Path) -> Path:
    from tests.conftest import build_tiny_model

    return build_tiny_model(folder)


MODEL: Path | None = None


def model_copy(scratch: Path) -> Path:
    return Path(shutil.copytree(MODEL, scratch / "model"))  # type: ignore[arg-type]


def rewrite_header(path: Path, edit: Callable[[dict], None]) -> None:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])


def tensors_of(header: dict) -> list[dict]:
    return [header[k] for k in sorted(header) if k != "__metadata__"]


# ------------------------------------------------------------------ model files
@probe("model files")
def weights_swapped_by_rsync_t(s: Path) -> object:
    """Another checkpoint of the same size put in place with its mtime restored; the fingerprint must move."""
    from safetensors.torch import load_file, save_file

    m = model_copy(s)
    before = model_fingerprint(m, memo_dir=s / "memo")
    w = m / "model.safetensors"
    st = w.stat()
    save_file({k: v * -1 for k, v in load_file(str(w)).items()}, str(s / "other"), metadata={"format": "pt"})
    os.utime(s / "other", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(s / "other", w)
    if model_fingerprint(m, memo_dir=s / "memo") == before:
        return "same fingerprint"  # SILENT
    raise Held("the fingerprint moved")


@probe("model files", valid=True)
def stray_shard_beside_single_file(s: Path) -> object:
    m = model_copy(s)
    shutil.copy(m / "model.safetensors", m / "model-00001-of-00002.safetensors")
    return model_fingerprint(m) == model_fingerprint(MODEL) or None  # type: ignore[arg-type]


@probe("model files")
def index_with_only_backup_shard(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").rename(m / "model.bak.safetensors")
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    return model_fingerprint(m)


@probe("model files")
def index_weight_map_is_a_list(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").rename(m / "shard-a.safetensors")
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["shard-a.safetensors"]}))
    return model_fingerprint(m)


@probe("model files")
def index_names_absolute_shard(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").rename(s / "elsewhere.safetensors")
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": str(s / "elsewhere.safetensors")}}))
    return model_fingerprint(m)


@probe("model files")
def index_not_json(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").unlink()
    (m / "model.safetensors.index.json").write_text("{weight_map: oops")
    return model_fingerprint(m)


@probe("model files")
def header_dtype_lies_about_width(s: Path) -> object:
    m = model_copy(s)
    rewrite_header(m / "model.safetensors", lambda h: tensors_of(h)[-1].__setitem__("dtype", "F64"))
    return model_fingerprint(m)


@probe("model files")
def header_two_tensors_share_bytes(s: Path) -> object:
    m = model_copy(s)

    def alias(h: dict) -> None:
        a, b = tensors_of(h)[:2]
        if a["shape"] == b["shape"]:
            b["data_offsets"] = list(a["data_offsets"])
        else:
            h["dup"] = dict(a)
    rewrite_header(m / "model.safetensors", alias)
    return model_fingerprint(m)


@probe("model files")
def header_is_a_json_list(s: Path) -> object:
    m = model_copy(s)
    text = b"[1, 2, 3]"
    (m / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text)
    return model_fingerprint(m)


@probe("model files")
def header_length_is_2_to_63(s: Path) -> object:
    m = model_copy(s)
    raw = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + raw[8:])
    return model_fingerprint(m)


@probe("model files")
def weights_file_empty(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").write_bytes(b"")
    return model_fingerprint(m)


@probe("model files")
def weights_is_a_folder(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").unlink()
    (m / "model.safetensors").mkdir()
    return model_fingerprint(m)


@probe("model files", names=("config.json",))
def config_is_a_json_string(s: Path) -> object:
    m = model_copy(s)
    (m / "config.json").write_text('"llama"')
    return model_fingerprint(m)


@probe("model files", names=("config.json",))
def config_deeply_nested(s: Path) -> object:
    m = model_copy(s)
    (m / "config.json").write_text('{"rope_scaling": ' + "[" * 50000 + "]" * 50000 + "}")
    return model_fingerprint(m)


@probe("model files", names=("config.json",))
def config_with_auto_map_and_unknown_type(s: Path) -> object:
    m = model_copy(s)
    config = json.loads((m / "config.json").read_text())
    config.update(model_type="probe-remote", auto_map={"AutoConfig": "remote.Cfg", "AutoModelForCausalLM": "remote.M"})
    (m / "config.json").write_text(json.dumps(config))
    (m / "remote.py").write_text("import os\nos._exit(77)\n")
    return model_fingerprint(m)


@probe("model files", names=("tokenizer.json",))
def tokenizer_json_is_a_number(s: Path) -> object:
    m = model_copy(s)
    (m / "tokenizer.json").write_text("42")
    return model_fingerprint(m)


@probe("model files", names=("tokenizer_config.json",))
def tokenizer_config_is_a_list(s: Path) -> object:
    m = model_copy(s)
    (m / "tokenizer_config.json").write_text("[]")
    return model_fingerprint(m)


@probe("model files")
def only_a_pickle_without_opt_in(s: Path) -> object:
    m = model_copy(s)
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    return model_fingerprint(m, allow_pickle=False)


# ------------------------------------------------------------------ output paths
def output(path: Path) -> object:
    check_output(path, "--steer-report")
    return "writable"


@probe("output paths", names=("--steer-report",))
def report_is_a_unix_socket(s: Path) -> object:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(s / "sock"))
    try:
        return output(s / "sock")
    finally:
        sock.close()


@probe("output paths", names=("--steer-report",))
def report_through_a_dangling_symlink_loop(s: Path) -> object:
    (s / "a").symlink_to(s / "b")
    (s / "b").symlink_to(s / "a")
    return output(s / "a")


@probe("output paths", names=("--steer-report",))
def report_under_a_regular_file(s: Path) -> object:
    (s / "file").write_text("x")
    return output(s / "file" / "report.json")


@probe("output paths", names=("--steer-report",))
def report_is_dev_zero(s: Path) -> object:
    return output(Path("/dev/zero"))


@probe("output paths", valid=True)
def report_is_a_symlink_to_a_regular_file(s: Path) -> object:
    (s / "real.json").write_text("{}")
    (s / "link.json").symlink_to(s / "real.json")
    return output(s / "link.json")


# ------------------------------------------------------------------ case files
BASE_CASE = """
[defaults]
n_dev = 10
n_test = 12

[models.tiny]
path = "{model}"

[tasks.pairs]
path = "{task}"

[[suite]]
models = ["tiny"]
methods = ["task_vector"]
tasks = ["pairs"]
"""


def task_file(s: Path) -> Path:
    path = s / "pairs.json"
    path.write_text(json.dumps([{"input": f"w{i}", "output": f"v{i}"} for i in range(40)]))
    return path


def cases(s: Path, extra: str = "", replace: tuple[str, str] | None = None, raw: bytes | None = None) -> object:
    text = BASE_CASE.format(model=MODEL, task=task_file(s)) + extra
    if replace:
        text = text.replace(*replace)
    path = s / "steer_probe.toml"
    path.write_bytes(raw if raw is not None else text.encode())
    found = load_case_file(path)
    broken = [c for c in found if isinstance(c, BrokenCase)]
    if broken:
        raise CaseFileError(broken[0].message)
    return found


@probe("case files", names=("steer_probe.toml",))
def seed_is_a_float_with_fraction(s: Path) -> object:
    return cases(s, replace=("n_test = 12", "n_test = 12\nseed = 1.5"))


@probe("case files", names=("steer_probe.toml",))
def seed_is_2_to_70(s: Path) -> object:
    return cases(s, replace=("n_test = 12", f"n_test = 12\nseed = {2**62}\n[methods.task_vector]\nn_prompts = {2**62}"))


@probe("case files", names=("steer_probe.toml",))
def n_test_is_true(s: Path) -> object:
    return cases(s, replace=("n_test = 12", "n_test = true"))


@probe("case files", names=("steer_probe.toml",))
def threshold_is_nan(s: Path) -> object:
    return cases(s, replace=("n_test = 12", "n_test = 12\nthreshold = nan"))


@probe("case files", names=("steer_probe.toml",))
def model_name_with_slash(s: Path) -> object:
    return cases(s, replace=('models = ["tiny"]', 'models = ["a/b"]')).__class__  # type: ignore[return-value]


@probe("case files", names=("steer_probe.toml",))
def task_name_with_trailing_newline(s: Path) -> object:
    return cases(s, replace=('tasks = ["pairs"]', 'tasks = ["pairs\\n"]'))


@probe("case files", names=("steer_probe.toml",))
def variant_name_dotdot(s: Path) -> object:
    return cases(s, extra='\n[[case]]\nmodel = "tiny"\ntask = "pairs"\nvariant = ".."\n')


@probe("case files", names=("steer_probe.toml",))
def file_is_latin1(s: Path) -> object:
    return cases(s, raw="# caf\xe9\n".encode("latin-1") + BASE_CASE.format(model=MODEL, task=task_file(s)).encode())


@probe("case files", names=("steer_probe.toml",))
def file_is_deeply_nested_arrays(s: Path) -> object:
    return cases(s, extra="\nx = " + "[" * 3000 + "]" * 3000 + "\n")


@probe("case files", names=("fifo-model",))
def model_path_is_a_fifo(s: Path) -> object:
    """Read as a case, then resolved as a run would before loading it."""
    from pytest_steer.models.loader import resolve

    os.mkfifo(s / "fifo-model")
    found = cases(s, replace=(str(MODEL), str(s / "fifo-model")))
    return resolve(found[0].model, s / "cache")  # type: ignore[index,union-attr]


@probe("case files", names=("steer_probe.toml",))
def task_path_is_a_fifo(s: Path) -> object:
    os.mkfifo(s / "fifo-task.json")
    text = BASE_CASE.format(model=MODEL, task=s / "fifo-task.json")
    return cases(s, raw=text.encode())


@probe("case files", names=("steer_probe.toml",))
def unknown_top_level_table(s: Path) -> object:
    return cases(s, extra="\n[modles.tiny]\npath = 'x'\n")


# ------------------------------------------------------------------ task files
def task(s: Path, data: bytes, name: str = "t.json") -> object:
    path = s / name
    path.write_bytes(data)
    return load_task("t", path)


@probe("task files", valid=True)
def json_task_with_bom(s: Path) -> object:
    return task(s, b"\xef\xbb\xbf" + json.dumps([{"input": f"a{i}", "output": f"b{i}"} for i in range(3)]).encode())


@probe("task files", valid=True)
def csv_with_bom_and_crlf(s: Path) -> object:
    rows = "Question,Best Answer,Correct Answers,Incorrect Answers\r\nQ?,yes,yes; sure,no; never\r\n"
    return task(s, b"\xef\xbb\xbf" + rows.encode(), "t.csv")


@probe("task files")
def csv_with_nul_bytes(s: Path) -> object:
    return task(s, b"Question,Best Answer,Correct Answers,Incorrect Answers\nQ\x00?,a,a,b\n", "t.csv")


@probe("task files")
def json_pairs_with_integer_output(s: Path) -> object:
    return task(s, json.dumps([{"input": "a", "output": 7}]).encode())


@probe("task files")
def json_utf16(s: Path) -> object:
    return task(s, json.dumps([{"input": "a", "output": "b"}]).encode("utf-16"))


@probe("task files")
def json_nested_100k(s: Path) -> object:
    return task(s, b"[" * 100000 + b"]" * 100000)


@probe("task files")
def json_object_not_list(s: Path) -> object:
    return task(s, json.dumps({"input": "a", "output": "b"}).encode())


@probe("task files")
def json_empty_list(s: Path) -> object:
    return task(s, b"[]")


@probe("task files")
def json_huge_number(s: Path) -> object:
    return task(s, b'[{"input": "a", "output": 1e999}]')


@probe("task files")
def mc_question_with_no_incorrect(s: Path) -> object:
    return task(s, json.dumps([{"question": "Q?", "best_answer": "a", "correct_answers": ["a"],
                                "incorrect_answers": []}]).encode())


@probe("task files")
def task_path_is_a_folder(s: Path) -> object:
    (s / "t.json").mkdir()
    return load_task("t", s / "t.json")


# ------------------------------------------------------------------ baselines
def baseline(s: Path, edit: Callable[[dict], None] | None = None, raw: bytes | None = None) -> object:
    source = ROOT / "baselines" / "smollm2-135m" / "dola" / "truthful-mc-lower.json"
    data = json.loads(source.read_text())
    if edit:
        edit(data)
    folder = s / "b" / "smollm2-135m" / "dola"
    folder.mkdir(parents=True)
    (folder / "truthful-mc-lower.json").write_bytes(raw if raw is not None else json.dumps(data).encode())
    return BaselineStore(s / "b").load("smollm2-135m", "dola", "truthful-mc-lower")


@probe("stored numbers", valid=True)
def baseline_unchanged(s: Path) -> object:
    return baseline(s)


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_outcome_is_2(s: Path) -> object:
    return baseline(s, lambda d: d["per_item"]["steered"].__setitem__(0, 2))


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_outcome_is_string(s: Path) -> object:
    return baseline(s, lambda d: d["per_item"]["steered"].__setitem__(0, "1"))


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_one_outcome_short(s: Path) -> object:
    return baseline(s, lambda d: d["per_item"]["unsteered"].pop())


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_steered_is_infinity(s: Path) -> object:
    return baseline(s, raw=json.dumps(json.loads((ROOT / "baselines/smollm2-135m/dola/truthful-mc-lower.json")
                                                 .read_text())).replace('"steered": 0.', '"steered": Infinity, "x": 0.', 1)
                    .encode())


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_n_test_disagrees_with_outcomes(s: Path) -> object:
    return baseline(s, lambda d: d["metrics"].__setitem__("n_test", 5))


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_graded_mc2_is_negative(s: Path) -> object:
    return baseline(s, lambda d: d["per_item"]["mc2_steered"].__setitem__(0, -0.5))


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_seed_is_huge(s: Path) -> object:
    return baseline(s, lambda d: d.__setitem__("seed", 2**70))


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_is_null(s: Path) -> object:
    return baseline(s, raw=b"null")


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_truncated_half(s: Path) -> object:
    text = (ROOT / "baselines/smollm2-135m/dola/truthful-mc-lower.json").read_bytes()
    return baseline(s, raw=text[: len(text) // 2])


@probe("stored numbers", names=("truthful-mc-lower.json",))
def baseline_chosen_is_a_list(s: Path) -> object:
    return baseline(s, lambda d: d.__setitem__("chosen", [1, 2]))


@probe("stored numbers", names=("tinytask.safetensors", "vector"))
def cached_vector_all_nan(s: Path) -> object:
    import torch

    from pytest_steer.storage.tensors import VectorCache, read_tensors, write_tensors

    cache = VectorCache(s)
    _, first = cache.get_or_build("tv", {"k": 1}, lambda: {"v": torch.ones(3)})
    tensors, meta = read_tensors(first.path)
    write_tensors(first.path, {"v": torch.full((3,), float("nan"))}, {k: v for k, v in meta.items()
                                                                      if k != "content_sha256"})
    got, outcome = cache.get_or_build("tv", {"k": 1}, lambda: {"v": torch.ones(3)})
    if not bool(torch.isfinite(got["v"]).all()):
        return "NaN vector used"  # SILENT
    raise Held(f"rebuilt, not used (rebuilt_corrupt={outcome.rebuilt_corrupt})")


# ------------------------------------------------------------------ reports and merge inputs
def report(s: Path, data: object, reader: Callable[[Path], object]) -> object:
    path = s / "r.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return reader(path)


@probe("reports", names=("r.json",))
def compare_report_cases_is_a_dict(s: Path) -> object:
    return report(s, {"cases": {"a": 1}, "counts": {}}, load_saved)


@probe("reports", names=("r.json",))
def compare_report_case_status_is_int(s: Path) -> object:
    return report(s, {"cases": [{"id": "a-b-c", "status": 3}], "counts": {}}, load_saved)


@probe("reports", names=("r.json",))
def compare_report_nan_literal(s: Path) -> object:
    return report(s, '{"cases": [NaN], "counts": {}}', load_saved)


@probe("reports", names=("r.json",))
def merge_shard_complete_is_string(s: Path) -> object:
    return report(s, {"cases": [], "complete": "yes", "unfinished": []}, load_shard)


@probe("reports", names=("r.json",))
def merge_shard_without_complete(s: Path) -> object:
    return report(s, {"cases": [], "counts": {}}, load_shard)


@probe("reports", names=("r.json",))
def merge_shard_marked_running(s: Path) -> object:
    return report(s, {"cases": [], "counts": {}, "complete": False, "unfinished": [], "state": "running"}, load_shard)


@probe("reports", names=("r.json",))
def merge_shard_case_id_with_newline(s: Path) -> object:
    return report(s, {"cases": [{"id": "m-task_vector-t\n", "model": "m", "method": "task_vector", "task": "t",
                                 "variant": "", "status": "pass", "result": None}],
                      "complete": True, "unfinished": []}, load_shard)


@probe("reports", names=("r.json",))
def merge_shard_is_a_fifo(s: Path) -> object:
    os.mkfifo(s / "r.json")
    return load_shard(s / "r.json")


def main() -> int:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the probes of this class")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    bad = 0
    with tempfile.TemporaryDirectory(prefix="steer-probe-") as root:
        MODEL = tiny_model(Path(root) / "tiny")
        chosen = [p for p in PROBES if not args.only or p.kind == args.only]
        for i, p in enumerate(chosen):
            scratch = Path(root) / f"p{i}"
            scratch.mkdir()
            try:
                p.run(scratch)
                outcome, detail = ("accepted", "") if p.valid else ("SILENT", "a record came back")
            except Held as exc:
                outcome, detail = "held", str(exc)
            except OWN_ERRORS as exc:
                text = str(exc)
                clear = any(n in text for n in p.names) if p.names else (str(scratch) in text or "/" in text)
                outcome = ("error" if clear else "unclear") if not p.valid else "SILENT"
                detail = text.replace(str(scratch) + "/", "").replace(root + "/", "")[:150]
            except BaseException as exc:  # noqa: BLE001 - the point is to see every other kind
                outcome, detail = "CRASH", f"{type(exc).__name__}: {str(exc)[:120]}"
            bad += outcome in ("SILENT", "CRASH", "unclear")
            print(f"{outcome:9} {p.kind:15} {p.name:45} {detail}".rstrip(), flush=True)
    print(f"{len(chosen)} probes: {len(chosen) - bad} as they should be, {bad} not")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
