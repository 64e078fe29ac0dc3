"""The command-line contract, asserted the same way by every CLI test: running a command,
indexing and ranking through the CLI, and the user-error rule (one line, exit status 2)."""

import json

from click.testing import CliRunner

from tbps_runtime.cli.search import index_command, rank_command

SAMPLE_QUERIES = ["red", "a person in a blue coat", "green shirt", "white", "yellow", "black"]


def run(command, args):
    """Invoke a click command with ``args`` (anything str() can print), exceptions propagating."""
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def index(bundle, images, output, *extra):
    """``tbps-index --quiet``; asserts it succeeded."""
    result = run(index_command, ["--bundle", bundle, "--images", images, "-o", output, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return result


def rank_json(gallery, *extra, queries=SAMPLE_QUERIES):
    """``tbps-rank --json`` for ``queries``: (the parsed results, stderr)."""
    result = run(rank_command, ["--gallery", gallery, *sum((["--query", q] for q in queries), []), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def assert_user_error(result, *fragments):
    """Exit status 2, exactly one ``error: ...`` line on stderr holding each fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
