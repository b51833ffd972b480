"""`python -m pytest_steer COMMAND ...` (or `pytest-steer COMMAND ...`): the command-line tools, outside pytest.

    merge     the reports of a suite split over machines, into one (and, with --update, into baselines)
    html      the HTML report from a saved --steer-report
    markdown  the generated tables of a results document, from the stored baselines
    perturb   an exact or noised local copy of a packaged model
    gguf      a vector file (an accepted vector beside a baseline) as a llama.cpp / repeng GGUF control vector
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "merge": "pytest_steer.report.merge",
    "html": "pytest_steer.report.html",
    "markdown": "pytest_steer.report.markdown",
    "perturb": "pytest_steer.models.perturb",
    "gguf": "pytest_steer.storage.vector_file",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named command with the remaining arguments; usage and exit 2 for a missing or unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"python -m pytest_steer: unknown command {args[0]!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[args[0]]).main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
