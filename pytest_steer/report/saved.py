"""Reading the cases of a saved `--steer-report` file (for `--steer-compare` and the merge), every field checked."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pytest_steer.record import (MAX_CASE_ID, MAX_NAME, CaseResult, RecordError, case_id, check_name, check_record,
                                 field_path, short_repr, task_slot)
from pytest_steer.report.cases import CaseReport


def report_case(raw: Any, path: str = "") -> CaseReport:
    """A case as `CaseReport.to_json` writes it; RecordError naming the field (under `path`) if malformed.

    Its names are names (`record.is_name`) or empty (a case that broke before it had them); its verdict and
    result are checked field by field, the result's per-item outcomes against its test-item count.
    """
    case = check_record(CaseReport, raw, path, skip=("result",))
    for key in ("id", "model", "method", "task", "variant"):
        check_name(getattr(case, key), field_path(path, key), empty=key != "id",
                   longest=MAX_CASE_ID if key == "id" else MAX_NAME)
    if case.model_loads < 0:
        raise RecordError(f"field '{field_path(path, 'model_loads')}': expected a count >= 0, got {case.model_loads}")
    named = case_id(case.model, case.method, task_slot(case.task, case.variant))
    if case.model and case.method and case.task and case.id != named:  # two ids for one baseline would overwrite it
        raise RecordError(f"field '{field_path(path, 'id')}': {short_repr(case.id)} is not the id of its model, method "
                          f"and task ({named})")
    result = raw.get("result")
    if result is None:
        return case
    read = CaseResult.from_baseline(result, field_path(path, "result"))
    if (read.id, read.model, read.method, read.task, read.variant) != (case.id, case.model, case.method, case.task,
                                                                         case.variant):
        raise RecordError(f"field '{field_path(path, 'result')}': the result of {short_repr(read.id)} under case "
                          f"{short_repr(case.id)}")
    return replace(case, result=read)
