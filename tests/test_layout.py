"""The package layout is the architecture: every module sits in a concern package and ARCHITECTURE.md names it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pytest_steer"
TOP_LEVEL = {"__init__.py", "__main__.py", "plugin.py", "errors.py", "record.py"}


def test_only_the_entry_points_and_shared_records_sit_at_the_top() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL


def test_architecture_names_every_module_and_package_with_a_purpose() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    tree = text[text.index("```\npytest_steer/"):text.index("```", text.index("```\npytest_steer/") + 3)]
    lines = tree.splitlines()
    for package in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        row = next((line for line in lines if line.strip().startswith(f"{package.name}/")), None)
        assert row is not None and len(row.split(None, 1)) == 2, f"ARCHITECTURE.md: {package.name}/ has no purpose"
        assert ast.get_docstring(ast.parse((package / "__init__.py").read_text())), f"{package.name}: no docstring"
        for module in package.glob("*.py"):
            if module.name != "__init__.py":
                assert any(line.strip().startswith(module.name) for line in lines), \
                    f"ARCHITECTURE.md does not name {package.name}/{module.name}"
    for module in TOP_LEVEL:
        assert any(line.strip().startswith(module) for line in lines), f"ARCHITECTURE.md does not name {module}"


def test_hooks_are_thin() -> None:
    """Each pytest hook in plugin.py is one call into the run (pytest_configure, which creates it, excepted)."""
    tree = ast.parse((PACKAGE / "plugin.py").read_text())
    hooks = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("pytest_")]
    assert len(hooks) >= 8
    for hook in hooks:
        body = [s for s in hook.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        if hook.name != "pytest_configure":
            assert len(body) <= 2, f"plugin.{hook.name} has {len(body)} statements: move its logic into SteerRun"
    assert not [c for c in tree.body if isinstance(c, ast.ClassDef)], "plugin.py holds hooks, not classes"
