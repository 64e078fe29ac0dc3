"""``tbps``: one command, its subcommands found through the ``tbps.commands`` entry-point group.

Each entry point names the extra it needs (``train = "tbps_train.cli:train_command [train]"``).
A subcommand whose extra is not installed is still listed, as unavailable with the ``pip install``
that brings it, and running it is one ``error:`` line naming the extra: an edge install (no PyTorch)
says what it lacks rather than "No such command". Subcommand modules are imported only when listed
or run, and never for an unavailable one. The ``tbps-NAME`` scripts are aliases of the same commands.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from importlib.util import find_spec

import click

from tbps_runtime.clikit import CONTEXT_SETTINGS, TbpsGroup, set_verbosity

ENTRY_POINT_GROUP = "tbps.commands"
DISTRIBUTION = "tbps"


@functools.lru_cache(maxsize=None)
def _extra_requirements(extra: str) -> tuple[str, ...]:
    """Distribution names an extra of tbps requires, nested extras (``tbps[train]``) expanded."""
    names: list[str] = []
    for requirement in metadata.requires(DISTRIBUTION) or []:
        marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if not marker or marker[1] != extra:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement)[0]
        nested = re.match(r"[A-Za-z0-9._-]+\[([^\]]+)\]", requirement)
        if name == DISTRIBUTION and nested:
            for inner in nested[1].split(","):
                names += _extra_requirements(inner.strip())
        else:
            names.append(name)
    return tuple(names)


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def _present(entry_point: metadata.EntryPoint) -> bool:
    """Its package is part of this install (all three ship in one distribution, so normally true)."""
    return find_spec(entry_point.module.split(".")[0]) is not None


def missing_extras(entry_point: metadata.EntryPoint) -> tuple[str, ...]:
    """The extras ``entry_point`` names that are not fully installed (a requirement absent)."""
    return tuple(extra for extra in entry_point.extras
                 if not all(_installed(name) for name in _extra_requirements(extra)))


def install_hint(extras: tuple[str, ...]) -> str:
    """The pip command that brings ``extras``: ``pip install 'tbps[footage]'``."""
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def _commands() -> list[metadata.EntryPoint]:
    points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    return [point for point in sorted(points, key=lambda p: p.name) if _present(point)]


def available_commands() -> dict[str, metadata.EntryPoint]:
    """Subcommand name -> entry point, for the subcommands this install can run."""
    return {point.name: point for point in _commands() if not missing_extras(point)}


def unavailable_commands() -> dict[str, tuple[str, ...]]:
    """Subcommand name -> the extras it needs that this install lacks."""
    return {point.name: missing for point in _commands() if (missing := missing_extras(point))}


class UnavailableCommand(click.Command):
    """Stands for a subcommand whose extra is missing: listed with its pip command; running it, with
    any arguments (``--help`` included), is one ``error:`` line naming the extra."""

    def __init__(self, name: str, extras: tuple[str, ...]):
        super().__init__(name, short_help=f"unavailable: {install_hint(extras)}", add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        self.extras = extras

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        missing = sorted({name for extra in self.extras for name in _extra_requirements(extra)
                          if not _installed(name)})
        raise click.ClickException(
            f"tbps {self.name} needs the {', '.join(self.extras)} extra, not installed here "
            f"(missing: {', '.join(missing)}): {install_hint(self.extras)}")


class LazyGroup(TbpsGroup):
    """Lists every entry point; imports a subcommand's module only when it is needed and can run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [point.name for point in _commands()]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        point = available_commands().get(name)
        if point is not None:
            return point.load()
        extras = unavailable_commands().get(name)
        return UnavailableCommand(name, extras) if extras else None


@click.group(name="tbps", cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name=DISTRIBUTION, prog_name="tbps")
@click.option("-v", "--verbose", count=True, help="More log lines (repeatable).")
@click.option("-q", "--quiet", count=True, help="Warnings only.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Text-based person search: describe a person in words, rank person crops.

    Run 'tbps COMMAND --help' for a command's options. Every command reports a
    user error as one 'error:' line on stderr and exit status 2.
    """
    set_verbosity(ctx, verbose, quiet)
