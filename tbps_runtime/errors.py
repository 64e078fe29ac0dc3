"""Error types shared by every tbps package.

A :class:`TbpsError` is a user error (bad path, bad file, mismatch): the
command line prints it on one line of stderr and exits with status 2.
Anything else is a bug and keeps its traceback.

A library error states facts, in Python's terms: its message is a complete
sentence that names the value and the fix as a caller of the library would
make it (``everything=True``), never a command-line flag. Where a front end
must word it for its own users, the error also carries a machine-readable
``code`` and the ``facts`` behind the message: the command line turns a code
into flags (:mod:`tbps_runtime.climessages`), the service into request fields
(:mod:`tbps_runtime.serve.messages`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Union

PARAMETER_INVALID = "parameter_invalid"  # the code of a bad value whose message starts with the parameter's name

Wording = Union[str, Callable[[Mapping[str, Any]], str]]  # a front end's words for one code


class TbpsError(Exception):
    """A user error with a message that names the value and the fix.

    ``code``: a short constant naming what went wrong (``"delete_everything_unconfirmed"``), for front
    ends that word some errors themselves; None when the message is the same for every user. ``facts``:
    the values the message states (``{"rows": 120}``), for such wording. With the code
    :data:`PARAMETER_INVALID`, ``facts["names"]`` are the parameters the message names, first one first.
    """

    def __init__(self, message: str = "", /, *, code: str | None = None, **facts: Any):
        super().__init__(message)
        self.code = code
        self.facts = facts

    def worded(self, words: Mapping[str, Wording], names: Mapping[str, str]) -> str:
        """This error in a front end's words.

        ``words``: per code, a template over the facts (``{message}``: this message) or a function of the
        facts. ``names``: the front end's name of each parameter (an option, a request field), said in
        place of the parameters a :data:`PARAMETER_INVALID` message names. Anything else: the message.
        """
        if self.code == PARAMETER_INVALID:
            return _renamed(str(self), self.facts.get("names", ()), names)
        wording = words.get(self.code or "")
        if wording is None:
            return str(self)
        return wording(self.facts) if callable(wording) else wording.format(**self.facts, message=str(self))


class InputFileNotFoundError(TbpsError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class DataError(TbpsError, ValueError):
    """A dataset on disk is malformed, incomplete or empty."""


class CheckpointError(TbpsError, ValueError):
    """A file is not a tbps checkpoint, or one this version cannot read."""


class ConfigError(TbpsError, ValueError):
    """An option or combination of options that cannot work."""


class BundleError(TbpsError, ValueError):
    """A bundle or gallery that is incomplete, modified, or from another model."""


class ExportError(TbpsError, ValueError):
    """An export that cannot be made or fails its checks (e.g. ONNX vs PyTorch parity)."""


class QueryError(TbpsError, ValueError):
    """A search query that cannot be embedded (empty, whitespace only, not text)."""


class StoreError(TbpsError):
    """A store that cannot answer now: its database cannot be reached, timed out, or failed an
    operation. Not its contents (a damaged or foreign store is a :class:`BundleError`) and not the
    request: trying again later may work."""


class OutputError(TbpsError):
    """An output that must not be written: another run is writing it, it is not tbps's to replace,
    it is an input of the same command, or it does not fit on its disk."""


class UnsafePathError(DataError):
    """A file name read from a file (a manifest, a gallery's ``g.json``, a dataset's annotations)
    that would lead outside the directory it is relative to: absolute, or climbing with ``..``."""


def _renamed(message: str, parameters: tuple[str, ...], names: Mapping[str, str]) -> str:
    """``message`` with the first mention of each of ``parameters`` said as its entry in ``names``."""
    for parameter in parameters:
        if parameter in names:
            pattern = rf"(?<![\w.-]){re.escape(parameter)}(?![\w-])"
            message = re.sub(pattern, lambda _, name=names[parameter]: name, message, count=1)
    return message
