"""Code identity: a hash of the source that computes a result, so no cache outlives an edit of its code.

The plugin's own files cover the built-in methods; a third-party method adds the files of the top-level
package (or module) its entry point names, found without importing it, and its distribution's version.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # pytest_steer/


def _tree_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@cache
def plugin_source_hash() -> str:
    """Hash of the installed plugin's own files: an editable install changes code, not its version."""
    files = [p for p in PACKAGE_DIR.rglob("*")
             if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts]
    return _tree_hash(PACKAGE_DIR, files)


@cache
def module_source_hash(module: str) -> str:
    """Hash of the source of `module`'s top-level package (every `.py` under it) or single-file module, and of
    its distribution's version; "" when no source can be found (the plugin's identity then stands alone)."""
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
        files = [(root, p) for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    elif spec.origin and Path(spec.origin).is_file():
        files = [(Path(spec.origin).parent, Path(spec.origin))]
    else:
        return ""
    digest = hashlib.sha256()
    for root, path in sorted(files, key=lambda rp: str(rp[1])):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for dist in sorted(packages_distributions().get(top, [])):
        try:
            digest.update(f"{dist}=={version(dist)}".encode())
        except PackageNotFoundError:
            pass
    return digest.hexdigest()[:16]


def code_identity(target: str) -> str:
    """The identity of the code behind a method registered as `module:attribute`: the plugin's source, plus the
    method's own package unless it is part of the plugin."""
    module = target.partition(":")[0]
    if module == "pytest_steer" or module.startswith("pytest_steer."):
        return plugin_source_hash()
    return f"{plugin_source_hash()}+{module_source_hash(module)}"
