"""The base of every command module: the error contract, logging set-up and the shared options.

The command modules of all three packages (``tbps_runtime.cli``, ``tbps_train.cli``,
``tbps_export.cli``) build on this module; the trainer and the exporter never import
``tbps_runtime.cli`` (an import-linter contract). Any user error, click's own usage errors
and operating-system errors that name a path (permission denied, not a directory, disk
full) included, becomes one line on stderr, ``error: <message>``, and exit status 2; no
traceback. Commands are built with :class:`TbpsCommand` (``@click.command(cls=TbpsCommand)``),
so the same holds whether they run as ``tbps NAME`` or as their ``tbps-NAME`` alias.
Library code only logs; handlers are set here.
"""

from __future__ import annotations

import errno
import functools
import inspect
import io
import logging
import os
import sys
from typing import Any, Callable

import click

from tbps_runtime.climessages import in_flags  # messages hook
from tbps_runtime.errors import TbpsError
from tbps_runtime.paths import printable

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
MAX_THREADS = 1024  # --threads beyond it is a typo: onnxruntime and PyTorch fail or hang creating them
_VERBOSITY = "tbps.verbosity"  # ctx.meta key: -v/-q given to the `tbps` group


class _PrintableFormatter(logging.Formatter):
    """Log lines with file names that are not UTF-8 escaped (``\\xe9``), as in error lines."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def setup_logging(quiet: bool = False) -> bool:
    """INFO lines on stderr for the tbps packages; warnings only when quiet. Returns whether quiet.

    ``tbps -q`` before the subcommand counts as the subcommand's own ``--quiet``
    (commands use the returned value for their progress bars); ``tbps -v`` adds DEBUG lines.
    """
    context = click.get_current_context(silent=True)
    verbosity = context.meta.get(_VERBOSITY, 0) if context is not None else 0
    quiet = quiet or verbosity < 0
    level = logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO
    try:  # a file name that is not UTF-8 in a log line is escaped, never a "--- Logging error ---"
        sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_PrintableFormatter("%(message)s"))
    for name in ("tbps_runtime", "tbps_train", "tbps_export", "__main__"):
        logging.getLogger(name).setLevel(level)
    return quiet


def fail(message: str) -> None:
    """The one way a command reports a user error: ``error: <message>`` on one line of stderr, status 2.
    A file name that is not UTF-8 is escaped (``\\xe9``), so that printing it cannot fail."""
    _close_progress_bars()
    click.echo(f"error: {printable(' '.join(message.splitlines()))}", err=True)
    sys.exit(2)


def _close_progress_bars() -> None:
    """Close the tqdm bars an error left open (a loop's bar closes when it is garbage-collected, after the
    error is printed): the error would otherwise follow a half-drawn bar on the same line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def user_error_line(error: TbpsError) -> str:
    """The words a command prints for a library error: the one place both handlers below word it."""
    return in_flags(error)  # messages hook: a library error's code in flags (tbps_runtime.climessages)


def user_errors_exit_2(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a TbpsError raised by ``command``, or an OSError naming a path, into ``error: <message>``
    and status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TbpsError as e:
            fail(user_error_line(e))
        except OSError as e:
            fail_on_os_error(e)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


_OS_ADVICE = {
    errno.EACCES: "permission denied: check the permissions of it and of its directory, or choose another path",
    errno.EPERM: "operation not permitted: check the permissions of it and of its directory, or choose another path",
    errno.EROFS: "it is on a read-only file system: choose another path",
    errno.ENOTDIR: "a part of this path is a file, not a directory: choose another path",
    errno.EISDIR: "it is a directory, where a file was expected: give a file name",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "it already exists (is a file in the way of a directory?)",
    errno.ENOSPC: "the disk is full: free some space, then run the command again",
    errno.EDQUOT: "the disk quota is exceeded: free some space, then run the command again",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def os_error_message(error: OSError) -> str | None:
    """The one line for an operating-system error met by a command: the path and what to do.
    None for an error that names no path and is not a full disk (a bug: it keeps its traceback)."""
    names = [n for n in (error.filename, error.filename2) if n is not None]
    if not names and error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    advice = _OS_ADVICE.get(error.errno, error.strerror or str(error))
    where = " -> ".join(printable(os.fsdecode(n)) if isinstance(n, (str, bytes)) else str(n) for n in names)
    return f"{where}: {advice}" if where else advice


def fail_on_os_error(error: OSError) -> None:
    """:func:`fail` with :func:`os_error_message`; an OSError without a path is re-raised."""
    message = os_error_message(error)
    if message is None:
        raise error
    fail(message)


def _main_with_one_line_errors(main: Callable[..., Any], args: Any, prog_name: str | None,
                               complete_var: str | None, standalone_mode: bool, **extra: Any) -> Any:
    """click's ``main``, with its usage errors printed as one ``error:`` line and exit status 2."""
    if not standalone_mode:
        return main(args, prog_name, complete_var, standalone_mode=False, **extra)
    try:
        result = main(args, prog_name, complete_var, standalone_mode=False, **extra)
    except click.ClickException as e:  # usage errors, bad parameter values, missing options
        hint = f" (see '{e.ctx.command_path} --help')" if isinstance(e, click.UsageError) and e.ctx else ""
        fail(f"{e.format_message()}{hint}")
    except TbpsError as e:  # raised outside a command body (e.g. by a callback)
        fail(user_error_line(e))
    except OSError as e:
        fail_on_os_error(e)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


class _NonEmptyPath(click.Path):
    """A ``click.Path`` that refuses ``""``: an empty path would silently name the current directory."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (str, bytes)) and not value:
            self.fail("an empty path: name a file or directory (. for the current one)", param, ctx)
        return super().convert(value, param, ctx)


class TbpsCommand(click.Command):
    """A click command whose usage errors follow the one-line ``error:`` contract, and whose path
    options refuse an empty path."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("context_settings", dict(CONTEXT_SETTINGS))
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param.type) is click.Path:
                param.type.__class__ = _NonEmptyPath  # same fields: every path option of every command

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        return _main_with_one_line_errors(super().main, args, prog_name, complete_var, standalone_mode, **extra)


# A period after these does not end the summary's sentence ("Eq. 14 score", "e.g. Market").
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "eq.", "eqs.", "fig.", "cf.", "vs.", "no.", "approx."})


def command_summary(command: click.Command) -> str:
    """The line a group lists for ``command``: its ``short_help``, else the first sentence of its help.

    click's own short help cuts at the first period before a non-lowercase word, so "Record the
    Eq. 14 score ..." became "Record the Eq."; here a sentence ends only at a period that closes the
    paragraph or comes before a capitalised word, and never after an abbreviation."""
    if command.short_help:
        return " ".join(inspect.cleandoc(command.short_help).split())
    words = (command.help or "").partition("\n\n")[0].split()
    if words and words[0] == "\b":  # click's no-rewrap marker
        words = words[1:]
    for i, word in enumerate(words):
        following = words[i + 1].lstrip("(\"'`") if i + 1 < len(words) else ""
        if word.endswith(".") and word.lower() not in _ABBREVIATIONS and (not following or following[0].isupper()):
            return " ".join(words[: i + 1])
    return " ".join(words)


def fit_line(text: str, width: int) -> str:
    """``text`` if it fits ``width`` characters, else cut at a word boundary and ended with "..."."""
    if len(text) <= width:
        return text
    kept = ""
    for word in text.split():
        if len(kept) + len(word) + 4 > width:  # a space, the word and "..."
            break
        kept = f"{kept} {word}" if kept else word
    return kept.rstrip(",;:(- ") + "..."


class TbpsGroup(click.Group):
    """A click group with the same error contract; subcommands come from :meth:`get_command`.
    Its command list shows each command's :func:`command_summary` on one line."""

    command_class = TbpsCommand

    def __init__(self, *args: Any, **kwargs: Any):
        # Its own -h/--help: click caches a command's help option on first use, so a subgroup first run on
        # its own (a script, a test) would otherwise keep --help alone under `tbps` too.
        kwargs.setdefault("context_settings", dict(CONTEXT_SETTINGS))
        super().__init__(*args, **kwargs)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(name, command) for name in self.list_commands(ctx)
                    if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if not commands:
            return
        # The text column of HelpFormatter.write_dl: the name column (at most 30) and its spacing go first.
        width = formatter.width - min(max(len(name) for name, _ in commands), 30) - 4
        rows = [(name, fit_line(command_summary(command), width)) for name, command in commands]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        return _main_with_one_line_errors(super().main, args, prog_name, complete_var, standalone_mode, **extra)


def set_verbosity(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Record the group's -v/-q for :func:`setup_logging` in the subcommand."""
    ctx.meta[_VERBOSITY] = verbose - quiet
    setup_logging(quiet > verbose)


# ---- one name per concept: shared options ------------------------------------------

def output_option(help: str, required: bool = True, file_okay: bool = True, dir_okay: bool = True,
                  default: Any = None, aliases: tuple[str, ...] = ()) -> Callable:
    """``-o/--output`` (older spellings in ``aliases`` keep working)."""
    # Only a real default is passed: click 8.5 reads an explicit default=None as "has a default", not required.
    extra = {} if default is None else {"default": default, "show_default": True}
    return click.option("-o", "--output", *aliases, "output", required=required,
                        type=click.Path(file_okay=file_okay, dir_okay=dir_okay), help=help, **extra)


def quiet_option(help: str = "Warnings only on stderr (no progress bars).") -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help=help)


def json_option(help: str = "Print one JSON document on stdout.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


def device_option(default: str | None = None) -> Callable:
    return click.option("--device", default=default, show_default=default is not None,
                        help="torch device: cpu, cuda or cuda:N (default: the preset's, cpu).")


def threads_option(help: str = "Intra-op threads (default: the cores other processes leave idle).") -> Callable:
    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), help=help)
