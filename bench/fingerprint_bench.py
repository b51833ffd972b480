"""What proving a model unchanged by content costs: the fingerprint as computed before (weights remembered by path,
size and mtime) and now (weights hashed on every resolve), side by side, on the converted packaged models.

    python bench/fingerprint_bench.py [--before 5d495cf] [--repeats 3]

The code before is read from git (`git show REV:pytest_steer/models/fingerprint.py`) and imported beside the
current module; both run in this process, alternating, on the same files. Each is warmed once (its memos filled,
the page cache holding the weights), then timed `--repeats` times; the median is printed with the fingerprints,
which must agree. This is the time a re-run with nothing changed spends per process per model.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_steer.models import fingerprint as now  # noqa: E402


def module_at(rev: str):  # type: ignore[no-untyped-def]
    source = subprocess.run(["git", "show", f"{rev}:pytest_steer/models/fingerprint.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="fp-before-")) / "fingerprint_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fingerprint_before", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def timed(call, repeats: int) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    call()  # warm: memos written, weights in the page cache
    times, value = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="5d495cf")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "pytest-steer" / "models")
    args = parser.parse_args()
    before = module_at(args.before)
    folders = sorted(p for p in args.models.glob("*/hf-*") if p.is_dir())
    if not folders:
        print(f"no converted models under {args.models}: run the suite once first")
        return 1
    print(f"{'model':22} {'GB':>5} {'before (s)':>11} {'now (s)':>9}  same fingerprint")
    total_before = total_now = 0.0
    for folder in folders:
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            t_before, fp_before = timed(lambda: before.model_fingerprint(folder, "float32", Path(a)), args.repeats)
            t_now, fp_now = timed(lambda: now.model_fingerprint(folder, "float32", Path(b)), args.repeats)
        total_before += t_before
        total_now += t_now
        print(f"{folder.parent.name:22} {size:5.2f} {t_before:11.3f} {t_now:9.3f}  {fp_before == fp_now}")
    print(f"{'all':22} {'':5} {total_before:11.3f} {total_now:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
