"""The command-line user-error contract, asserted the same way by every CLI test."""


def assert_user_error(result, *fragments):
    """Exit status 2, exactly one ``error: ...`` line on stderr holding each fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
