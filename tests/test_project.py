"""Project rules: layering of the three packages (and of the runtime's parts), and the README's commands."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "tbps_runtime": {"torch", "transformers", "tbps_train", "tbps_export"},
    "tbps_train": {"tbps_export"},
}


def imported_modules(package: str):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield path, node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    bad = [(str(p.relative_to(ROOT)), m) for p, m in imported_modules(package) if m in FORBIDDEN[package]]
    assert not bad, f"{package} imports what it must not: {bad}"


def test_runtime_never_loads_torch():
    # Importing every runtime module must not pull torch in, even indirectly.
    code = (
        "import pkgutil, sys, importlib, tbps_runtime\n"
        "for m in pkgutil.walk_packages(tbps_runtime.__path__, 'tbps_runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_contracts_are_kept():
    # pyproject.toml [tool.importlinter]: the package layers, no torch in the runtime, the runtime's parts
    # importing downwards only, no import cycles inside any package, click only in the command modules, and
    # no tbps_runtime.cli in the trainer or the exporter.
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    lint_imports = "from importlinter.cli import lint_imports_command; lint_imports_command()"  # `lint-imports`
    result = subprocess.run([sys.executable, "-c", lint_imports, "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert "tbps quickstart" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), "'.ci/run' must run the README's test command unchanged"
