"""Layering rules: argument parsing only in command-line modules, nothing imports a command-line module, no cycles.

A command-line module is one with an ``if __name__ == "__main__":`` entry (a console script or a
``python -m`` target); the project's console scripts must be such modules.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    for pkg in ("mri_score", "operators", "benchmarks", "docs"):
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


def _cycles(modules: dict) -> list[list[str]]:
    """Import cycles among ``modules`` (name -> parsed tree), imports inside functions included."""

    def project(name: str) -> str | None:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in modules:
                return ".".join(parts[:k])
        return None

    graph = {name: {m for imp in _imports(tree) if (m := project(imp)) and m != name
                    and not name.startswith(m + ".") and not m.startswith(name + ".")}
             for name, tree in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_cycle():
    """No chain of imports (module level or inside functions) leads from a module back to itself."""
    assert not _cycles(MODULES), _cycles(MODULES)


def test_cycle_detector_sees_a_cycle():
    """The cycle test would fail on a two-module cycle through a function-level import."""
    fake = {"pkg.a": ast.parse("from pkg.b import x"), "pkg.b": ast.parse("def f():\n    from pkg.a import y")}
    assert _cycles(fake) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert _cycles({"pkg.a": ast.parse("import pkg.b"), "pkg.b": ast.parse("import os")}) == []


def test_operators_import_no_ml():
    """``operators/`` is physics: it imports neither the library (``mri_score``) nor network code."""
    bad = {(name, imp) for name, tree in MODULES.items() if name.startswith("operators")
           for imp in _imports(tree) if imp.split(".")[0] in ("mri_score", "benchmarks", "safetensors")}
    assert not bad, bad


def test_importing_the_package_installs_no_signal_handler():
    """``import mri_score`` is a library import: it leaves every signal disposition as it was."""
    import signal
    import subprocess
    import sys

    code = ("import signal; before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)); "
            "import mri_score, mri_score.reconstruct; "
            "assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before, 'changed'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    del signal
