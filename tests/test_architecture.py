"""Layering rules: argument parsing only in command-line modules, and nothing imports a command-line module.

A command-line module is one with an ``if __name__ == "__main__":`` entry (a console script or a
``python -m`` target); the project's console scripts must be such modules.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    for pkg in ("mri_score", "operators", "benchmarks"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield name, ast.parse(path.read_text())


def _is_cli(tree) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name) \
                and node.test.left.id == "__name__":
            return True
    return False


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


MODULES = dict(_modules())
CLI_MODULES = {name for name, tree in MODULES.items() if _is_cli(tree)}


def test_console_scripts_are_command_line_modules():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {target.split(":")[0] for target in scripts.values()}
    assert targets <= CLI_MODULES, targets - CLI_MODULES
    assert {"mri_score.reconstruct", "mri_score.simulate", "benchmarks.run_benchmark"} <= CLI_MODULES


def test_argparse_only_in_command_line_modules():
    parsing = {name for name, tree in MODULES.items() if "argparse" in set(_imports(tree))}
    assert parsing <= CLI_MODULES, parsing - CLI_MODULES


def test_no_module_imports_a_command_line_module():
    offenders = {(name, imp) for name, tree in MODULES.items() for imp in _imports(tree)
                 if imp in CLI_MODULES and imp != name}
    assert not offenders, offenders


def test_no_import_path_hacks():
    """Scripts import the installed packages; none edits ``sys.path`` to find its siblings."""
    hacks = set()
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                hacks.add(name)
    assert not hacks, hacks
