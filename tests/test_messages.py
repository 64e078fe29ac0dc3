"""Library errors state facts; the command line words them in flags (tbps_runtime.climessages), the service
in request fields (tbps_runtime.serve.messages; its answers are tested in tests/test_serve.py).

The sources are read as they are: no error built outside a command module names an option, every code a
front end words is one the library raises, and every parameter a ``parameter_invalid`` error names has an
option. Then one error through each path: the library's sentence, and the command's ``error:`` line."""

from __future__ import annotations

import ast
import re
import string
import time
from pathlib import Path

import pytest
import store_rows

from cli_assertions import assert_user_error, run
from tbps_runtime.climessages import OPTIONS, WORDS, in_flags
from tbps_runtime.errors import PARAMETER_INVALID, ConfigError, TbpsError
from tbps_runtime.store.local import LocalStore
from tbps_runtime.store.rows import RowFilter, parse_age

ROOT = Path(__file__).resolve().parents[1]
WORDING_MODULES = {"tbps_runtime/climessages.py", "tbps_runtime/clikit.py"}  # the command line's own words
OPTION = re.compile(r"(?<![\w/.-])--[a-z][\w-]*|(?<![\w/.-])-[a-zA-Z](?=[\s,)`'\"]|$)")
ERROR_NAMES = re.compile(r"\w*Error|Conflict|NotFound")


def _library_modules(package: str) -> list[Path]:
    """The package's modules that are not command modules (those import click) nor the CLI's words."""
    modules = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        imports_click = any(isinstance(n, ast.Import) and any(a.name == "click" for a in n.names)
                            or isinstance(n, ast.ImportFrom) and n.module == "click" for n in ast.walk(tree))
        if not imports_click and relative not in WORDING_MODULES:
            modules.append(path)
    return modules


def _error_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if ERROR_NAMES.fullmatch(name):
                calls.append(node)
    return calls


def _strings(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _raised_codes() -> dict[str, list[ast.Call]]:
    """Every ``code="..."`` given to an error in the three packages, with the calls that give it."""
    codes: dict[str, list[ast.Call]] = {}
    for package in ("tbps_runtime", "tbps_train", "tbps_export"):
        for path in _library_modules(package):
            for call in _error_calls(ast.parse(path.read_text())):
                for keyword in call.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                        codes.setdefault(keyword.value.value, []).append(call)
    return codes


@pytest.mark.parametrize("package", ["tbps_runtime", "tbps_train", "tbps_export"])
def test_no_library_error_names_an_option(package):
    named = []
    for path in _library_modules(package):
        tree = ast.parse(path.read_text())
        constants = {n.targets[0].id: _strings(n.value) for n in tree.body
                     if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}
        for call in _error_calls(tree):
            text = _strings(call) + " ".join(constants.get(n.id, "") for n in ast.walk(call) if isinstance(n, ast.Name))
            found = OPTION.findall(text.replace("python -c", "python"))  # an example command, not an option of ours
            if found:
                named.append(f"{path.relative_to(ROOT)}:{call.lineno} {' '.join(sorted(set(found)))}")
    assert named == []


def test_every_code_the_command_line_words_is_raised_and_every_raised_code_is_worded():
    from tbps_runtime.serve.messages import WORDS as SERVICE_WORDS

    raised = set(_raised_codes())
    assert set(WORDS) <= raised and set(SERVICE_WORDS) <= raised
    assert raised - {PARAMETER_INVALID} <= set(WORDS)


def _needed_facts(module_path: Path, words: dict) -> dict[str, set[str]]:
    """The facts each front end's wording reads: a template's fields, or a function's ``f["name"]``."""
    tree = ast.parse(module_path.read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "WORDS")
    needed = {}
    for key, value in zip(table.keys, table.values):
        code = key.value
        if isinstance(value, ast.Lambda):
            needed[code] = {n.slice.value for n in ast.walk(value)
                            if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)}
        else:
            needed[code] = {field for _, field, _, _ in string.Formatter().parse(words[code]) if field} - {"message"}
    return needed


@pytest.mark.parametrize("module", ["tbps_runtime/climessages.py", "tbps_runtime/serve/messages.py"])
def test_every_error_carries_the_facts_its_wording_reads(module):
    from tbps_runtime.serve import messages as service_messages

    words = WORDS if module == "tbps_runtime/climessages.py" else service_messages.WORDS
    needed = _needed_facts(ROOT / module, words)
    missing = [f"{code}: line {call.lineno} lacks {sorted(needed[code] - {k.arg for k in call.keywords})}"
               for code, calls in _raised_codes().items() if code in needed
               for call in calls if needed[code] - {k.arg for k in call.keywords}]
    assert missing == []


def test_every_parameter_a_library_error_names_has_an_option():
    named = {element.value for call in _raised_codes()[PARAMETER_INVALID] for keyword in call.keywords
             if keyword.arg == "names" and isinstance(keyword.value, ast.Tuple)
             for element in keyword.value.elts if isinstance(element, ast.Constant)}
    assert named and named <= set(OPTIONS) and {"since", "until"} <= set(OPTIONS)


def test_a_parameter_error_states_the_parameter_and_the_command_line_the_option():
    with pytest.raises(ConfigError) as refused:
        RowFilter(since=200.0, until=100.0)
    error = refused.value
    assert error.code == PARAMETER_INVALID and error.facts == {"names": ("until", "since")}
    assert str(error).startswith("until (1970-01-01T00:01:40.000Z) must be after since (")
    assert in_flags(error).startswith("--until (1970-01-01T00:01:40.000Z) must be after --since (")
    with pytest.raises(ConfigError) as refused:
        parse_age("soon")
    assert str(refused.value).startswith("older_than 'soon' is not an age")
    assert in_flags(refused.value).startswith("--older-than 'soon' is not an age")


def test_an_error_without_a_code_or_with_an_unworded_one_keeps_its_message():
    assert in_flags(TbpsError("the file is damaged")) == "the file is damaged"
    assert in_flags(TbpsError("the file is damaged", code="not_worded", path="x")) == "the file is damaged"
    error = TbpsError("plain", code="delete_everything_unconfirmed", rows=3, location="s/")
    assert in_flags(error) == "this would remove all 3 rows of s/: add --yes to do it"


@pytest.fixture()
def small_store(tmp_path) -> tuple[Path, int]:
    """A local store of 12 random rows, seen within the last 10 days."""
    directory = tmp_path / "store"
    embeddings, records = store_rows.random_rows(12, seed=3, k=3, d=4, t0=0.0, now=time.time())
    with LocalStore.create(directory, fingerprint="f" * 64, num_slots=3, embed_dim=4) as store, store.writing():
        store.append(embeddings, records)
    return directory, len(records)


def test_the_library_states_the_fact_and_the_command_says_the_flag(small_store):
    from tbps_runtime.cli.ingest import gallery_group

    directory, rows = small_store
    with LocalStore.open(directory) as store, store.writing(), pytest.raises(ConfigError) as refused:
        store.delete(older_than=0.0)
    assert refused.value.code == "delete_everything_unconfirmed" and refused.value.facts["rows"] == rows
    assert "everything=True" in str(refused.value) and "--" not in str(refused.value)
    assert_user_error(run(gallery_group, ["prune", directory, "--older-than", "0s"]),
                      f"this would remove all {rows} rows of {directory}: add --yes to do it")
    assert_user_error(run(gallery_group, ["prune", directory, "--older-than", "soon"]), "--older-than 'soon'")


def test_a_dry_run_counts_every_row_without_the_confirmation(small_store):
    from tbps_runtime.cli.ingest import gallery_group

    directory, rows = small_store
    result = run(gallery_group, ["prune", directory, "--older-than", "0s", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert f'"rows": {rows}' in result.stdout
    with LocalStore.open(directory) as store:
        assert len(store) == rows
