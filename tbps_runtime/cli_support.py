"""What every tbps command shares: logging set-up and the user-error contract.

A :class:`~tbps_runtime.errors.TbpsError` becomes one line on stderr and exit
status 2; no traceback. Library code only logs; handlers are set here.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from tbps_runtime.errors import TbpsError


def setup_logging(quiet: bool = False) -> None:
    """INFO lines on stderr for the tbps packages; warnings only when quiet."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    level = logging.WARNING if quiet else logging.INFO
    for name in ("tbps_runtime", "tbps_train", "tbps_export", "__main__"):
        logging.getLogger(name).setLevel(level)


def user_errors_exit_2(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a TbpsError raised by ``command`` into ``error: <message>`` and status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TbpsError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
