"""The service's words: library errors said in request fields, the refusals of a request's bounds, and the
service's own answers about its gallery.

A library error states facts in Python's terms and carries a ``code`` and its ``facts``
(:class:`~tbps_runtime.errors.TbpsError`); :func:`for_http` words it for a client of the API, as
:mod:`tbps_runtime.climessages` does for the command line: a ``parameter_invalid`` message names the
request field instead of the parameter (``filters.until``), and the codes in :data:`WORDS` get their own
sentence (``send "everything": true``). The refusals below are shared by the request models
(:mod:`tbps_runtime.serve.schemas`: the default limits) and the service (a service's own, lower ones),
so that both say the same thing.

No answer names a command-line option (``--until``) or a file of the server's: the service's operator
reads those in its log.
"""

from __future__ import annotations

from tbps_runtime.errors import TbpsError, Wording

# The request field of each library parameter that a parameter_invalid error names.
FIELDS = {"since": "filters.since", "until": "filters.until", "older_than": "older_than", "min_score": "min_score",
          "camera": "filters.cameras", "source": "filters.sources"}

WORDS: dict[str, Wording] = {
    "delete_everything_unconfirmed": 'this would remove all {rows} rows of the store: send "everything": true to do '
                                     "it",
    "delete_without_condition": "say what to delete: filters (cameras, sources, tracks, since, until) or older_than",
    "min_score_uncalibrated": "min_score 'auto' needs a calibrated threshold (the store's or the bundle's: tbps "
                              "calibrate), and there is none: give a number",
}

NO_EXPLAIN_GRAPHS = ("this service's bundle has no explain graphs: explain needs a bundle exported with them "
                     "(ask the service's operator)")
KEY_REQUIRED = "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"

# The gallery, in the words of a 503.
GALLERY_GONE = ("the gallery this service was started on is gone (moved or deleted while it ran): its operator must "
                "restart the service on a gallery")
SERVER_FILES_UNREADABLE = ("the service's files (its gallery or bundle) cannot be read now: the service's log says "
                           "why")
STORE_NOT_ANSWERING = "the gallery's store is not answering: try again later"
STORE_BUSY = ("the store is being written by another process (tbps ingest, tbps gallery or another service): try "
              "again when it is done")
STORE_READ_ONLY = "this service's store is read-only: it can be searched, not changed"
STORE_UNWRITABLE = ("the store cannot be written now (a full or failing disk, or a catalog that does not answer): none "
                    "of the crops was added; the service's log says why")
STORE_FAILING = "the store cannot be written now (its disk is full or failing): the service's log says why"


def for_http(error: TbpsError) -> str:
    """The message a client gets for ``error``: its code in request fields, else its message."""
    return error.worded(WORDS, FIELDS)


def count_refusal(most: int, noun: str, got: int) -> str:
    """A list of ``got`` items where 1 to ``most`` are taken."""
    return f"give 1 to {most} {noun} per request, got {got}"


def length_refusal(length: int, most: int) -> str:
    """A query of ``length`` characters where at most ``most`` are taken."""
    return f"{length} characters; at most {most}: describe the person in fewer words"


def range_refusal(name: str, most: int, got: int) -> str:
    """A number ``name`` of ``got`` where 1 to ``most`` are taken."""
    return f"{name} must be 1 to {most}, got {got}"


__all__ = ["FIELDS", "GALLERY_GONE", "KEY_REQUIRED", "NO_EXPLAIN_GRAPHS", "SERVER_FILES_UNREADABLE", "STORE_BUSY",
           "STORE_FAILING", "STORE_NOT_ANSWERING", "STORE_READ_ONLY", "STORE_UNWRITABLE", "WORDS", "count_refusal",
           "for_http", "length_refusal", "range_refusal"]
