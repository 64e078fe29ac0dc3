"""Error types shared by every tbps package.

A :class:`TbpsError` is a user error (bad path, bad file, mismatch): the
command line prints its message on one line of stderr and exits with status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TbpsError(Exception):
    """A user error with a message that names the value and the fix."""


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
