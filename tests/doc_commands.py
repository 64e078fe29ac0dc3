"""The shell commands of the documentation, and a check of each against the real command line.

:func:`extract` reads the fenced blocks of a Markdown file (```bash, ```sh, ```shell, ```console, or
an unlabelled block of ``tbps`` lines, or with ``$ tbps`` prompts) and returns one :class:`DocCommand`
per simple command: backslash continuations joined, comments dropped, ``&&``/``||``/``;``/``|``/``&``
chains split, leading ``VAR=value`` assignments, ``do``/``then`` and a ``torchrun ... --no-python``
launcher left out. A usage synopsis (``tbps ingest SOURCE... [--fps 5] [--detector hog|PATH.onnx | ...]``)
becomes the command it describes: brackets dropped, the first of each set of alternatives kept.

:func:`parse` checks one command without running it: ``tbps`` subcommands (and the ``tbps-NAME``
aliases) through click's own parsing (``make_context``, the callback never invoked), ``python -m``
modules through their argparse or click parser (the module's main stops once its arguments are
parsed). Paths need not exist; a lone ``...`` stands for options left out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import runpy
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import click

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
ELIDED = "..."


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository root
    line: int  # the line the command starts on
    argv: tuple[str, ...]

    @property
    def text(self) -> str:
        return shlex.join(self.argv)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def all_commands() -> list[DocCommand]:
    return [c for path in doc_files()
            for c in extract(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())]


def checked(command: DocCommand) -> bool:
    """A command of this project: ``tbps``, a ``tbps-NAME`` alias, ``python -m benchmarks.*/tbps_*``,
    ``python -c``."""
    argv = command.argv
    if argv[0] == "tbps" or argv[0].startswith("tbps-"):
        return True
    if argv[0] in ("python", "python3") and len(argv) > 2:
        return argv[1] == "-c" or (argv[1] == "-m" and argv[2].startswith(("benchmarks.", "tbps_")))
    return False


# ---- extraction ------------------------------------------------------------------------------------

def extract(text: str, file: str) -> list[DocCommand]:
    """The shell commands of the Markdown ``text`` (``file``: the name they carry), in order."""
    commands, block, language, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence and block is None:
            block, language, start = [], fence[2].lower(), number + 1
        elif fence and line.strip() == fence[1]:
            commands += _block_commands(block, language, start, file)
            block = None
        elif block is not None:
            block.append(line)
    return commands


def _block_commands(lines: list[str], language: str, start: int, file: str) -> list[DocCommand]:
    prompts = [line for line in lines if re.match(r"\s*\$ tbps\s", line)]
    if language not in SHELL and not (language == "" and lines and (prompts or all(
            re.match(r"\s*tbps\s", line) for line in lines if line.strip()))):
        return []  # not shell; an unlabelled block counts when it is tbps commands, or a $ tbps transcript
    prompted = language == "console" or any(line.lstrip().startswith("$ ") for line in lines)
    commands, pending, first = [], "", 0
    for number, line in enumerate(lines, start):
        if not pending:
            if prompted and not line.lstrip().startswith("$ "):
                continue  # a console block's output
            line, first = re.sub(r"^\s*\$ ", "", line), number
        pending += line + "\n"
        code, quoted = _without_comments(pending)
        if quoted or code.endswith("\\\n"):
            continue  # an open quote or a backslash: the command goes on
        commands += [DocCommand(file, first, tuple(argv)) for argv in _split(_synopsis(code.replace("\\\n", "")))]
        pending = ""
    return commands


def _without_comments(text: str) -> tuple[str, bool]:
    """``text`` without its comments (a ``#`` that starts a word outside quotes, to the line's end), and
    whether a quote is left open."""
    kept, quote, comment, escaped = [], None, False, False
    for i, char in enumerate(text):
        if comment:
            comment = char != "\n"
        elif escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = text[i + 1:i + 2] != "\n"  # a backslash-newline stays: it continues the line
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            comment = True
            while kept and kept[-1] in " \t":
                kept.pop()
        if not comment:
            kept.append(char)
    return "".join(kept), quote is not None


def _synopsis(line: str) -> str:
    """A usage synopsis as the command it describes: ``[--fps 5]`` -> ``--fps 5``, ``a|b`` and ``A | B``
    -> the first alternative."""
    if not re.search(r"\[-", line):
        return line
    while (inner := re.search(r"\[([^\[\]]*)\]", line)):
        line = line[:inner.start()] + inner[1].split(" | ")[0] + line[inner.end():]
    return re.sub(r"(?<=\S)\|\S+", "", line)


def _split(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, ""
    commands, words = [], []
    for token in [*lexer, ";"]:
        if token in SEPARATORS:
            words = _simple(words)
            commands += [words] if words else []
            words = []
        else:
            words.append(token)
    return commands


def _simple(words: list[str]) -> list[str]:
    """The command of ``words``: no leading assignments or keywords, no redirections, no launcher."""
    for i in reversed(range(len(words))):
        if re.fullmatch(r"\d?>>?|<", words[i]):
            del words[i:i + 2]
    while words and (re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]) or words[0] in ("do", "then", "else")):
        words = words[1:]
    if words[:1] == ["torchrun"] and "--no-python" in words:
        words = words[words.index("--no-python") + 1:]
    return words


# ---- parsing ---------------------------------------------------------------------------------------

class _Parsed(Exception):
    """Raised by a patched parser once a module's arguments parsed: its main goes no further."""


def resolve(argv: tuple[str, ...]) -> tuple[click.Command, str, list[str]]:
    """The click command ``argv`` runs, its name and its arguments (``tbps [-q] GROUP... NAME ARGS``)."""
    from tbps_runtime.cli import main

    if argv[0] != "tbps":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
        if argv[0] not in scripts:
            raise click.UsageError(f"no such script: {argv[0]} (pyproject.toml's [project.scripts])")
        module, _, attribute = scripts[argv[0]].partition(":")
        return getattr(importlib.import_module(module), attribute), argv[0], list(argv[1:])
    command, name, args = main, "tbps", list(argv[1:])
    while isinstance(command, click.Group):
        while args and args[0].startswith("-"):  # the group's own flags (-q, -v)
            if args[0] not in {o for p in command.params for o in p.opts}:
                raise click.NoSuchOption(args[0])
            args = args[1:]
        if not args:
            break
        sub = command.get_command(click.Context(command, info_name=name), args[0])
        if sub is None:
            raise click.UsageError(f"No such command {args[0]!r} in '{name}'")
        command, name, args = sub, f"{name} {args[0]}", args[1:]
    return command, name, args


def _without_elisions(command: click.Command, args: list[str]) -> tuple[list[str], bool]:
    """``args`` without the ``...`` that stand for options left out (kept as an option's value)."""
    takes_value = {o for p in command.params if isinstance(p, click.Option) and not p.is_flag and not p.count
                   for o in p.opts}
    kept = [a for i, a in enumerate(args) if a != ELIDED or (i and args[i - 1] in takes_value)]
    return kept, len(kept) < len(args)


@contextlib.contextmanager
def _lenient(command: click.Command, elided: bool):
    """Paths need not exist (docs name placeholders); with options left out, none is required."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(click.Path, "convert", lambda self, value, param, ctx: value))
        if elided:
            for param in command.params:
                stack.enter_context(mock.patch.object(param, "required", False))
        yield


def parse(argv: tuple[str, ...]) -> None:
    """Parse ``argv`` as its program would, running nothing: raises click.UsageError (a
    ClickException) or SystemExit (argparse) for an unknown command or option, a bad choice, a
    missing value or a wrong number of arguments."""
    if argv[0] in ("python", "python3"):
        return _parse_module(argv[2], list(argv[3:])) if argv[1] == "-m" else None
    command, name, args = resolve(argv)
    args, elided = _without_elisions(command, args)
    with _lenient(command, elided):
        command.make_context(name, args, resilient_parsing=False)


def _parse_module(module: str, args: list[str]) -> None:
    original = argparse.ArgumentParser.parse_args

    def parsed(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise _Parsed

    def click_main(self, args=None, prog_name=None, *rest, **kwargs):
        with _lenient(self, False):
            self.make_context(prog_name or self.name, list(args if args is not None else sys.argv[1:]))
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parsed), \
            mock.patch.object(click.Command, "main", click_main), mock.patch.object(sys, "argv", [module, *args]), \
            mock.patch.object(sys, "path", [str(ROOT), *sys.path]):  # run from the repository's root
        try:
            runpy.run_module(module, run_name="__main__")
        except _Parsed:
            return
    raise AssertionError(f"python -m {module} returned without parsing its arguments")
