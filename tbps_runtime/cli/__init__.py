"""``tbps``: one command, its subcommands found through the ``tbps.commands`` entry-point group.

Each entry point names the extra it needs (``train = "tbps_train.cli:train_command [train]"``);
a subcommand whose extra is not installed is not listed, so an edge install
(no PyTorch) shows only what it can run. Subcommand modules are imported only
when listed or run. The ``tbps-NAME`` scripts are aliases of the same commands.
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


def _runnable(entry_point: metadata.EntryPoint) -> bool:
    """Its module can be imported: every requirement of its extras is installed."""
    if find_spec(entry_point.module.split(".")[0]) is None:
        return False
    return all(_installed(name) for extra in entry_point.extras for name in _extra_requirements(extra))


def available_commands() -> dict[str, metadata.EntryPoint]:
    """Subcommand name -> entry point, for the subcommands this install can run."""
    points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {point.name: point for point in sorted(points, key=lambda p: p.name) if _runnable(point)}


class LazyGroup(TbpsGroup):
    """Lists the available entry points; imports a subcommand's module only when it is needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(available_commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        point = available_commands().get(name)
        return point.load() if point is not None else None


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
