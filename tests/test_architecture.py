"""Layering rules: argument parsing only in command-line modules, and nothing imports a command-line module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: modules that parse arguments (their ``main`` is a console script or ``python -m`` target)
CLI_MODULES = {"mri_score.reconstruct", "mri_score.simulate", "mri_score.train", "mri_score.sample_prior",
               "benchmarks.run_benchmark", "benchmarks.run_dds_tuning", "benchmarks.run_maps_check",
               "benchmarks.run_memory"}


def _modules():
    for pkg in ("mri_score", "operators", "benchmarks"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield name, ast.parse(path.read_text())


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_argparse_only_in_command_line_modules():
    parsing = {name for name, tree in _modules() if "argparse" in set(_imports(tree))}
    assert parsing <= CLI_MODULES, parsing - CLI_MODULES


def test_no_module_imports_a_command_line_module():
    offenders = {(name, imp) for name, tree in _modules() for imp in _imports(tree)
                 if imp in CLI_MODULES and imp != name}
    assert not offenders, offenders
