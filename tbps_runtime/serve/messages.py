"""The service's words: library errors said in request fields, and the refusals of a request's bounds.

A library error states facts in Python's terms and carries a ``code`` and its ``facts``
(:class:`~tbps_runtime.errors.TbpsError`); :func:`for_http` words it for a client of the API, as
:mod:`tbps_runtime.climessages` does for the command line: a ``parameter_invalid`` message names the
request field instead of the parameter (``filters.until``), and the codes in :data:`WORDS` get their own
sentence (``send "everything": true``). The refusals below are shared by the request models
(:mod:`tbps_runtime.serve.schemas`: the default limits) and the service (a service's own, lower ones),
so that both say the same thing.
"""

from __future__ import annotations

from tbps_runtime.errors import TbpsError, Wording

# The request field of each library parameter that a parameter_invalid error names.
FIELDS = {"since": "filters.since", "until": "filters.until", "older_than": "older_than", "min_score": "min_score"}

WORDS: dict[str, Wording] = {
    "delete_everything_unconfirmed": 'this would remove all {rows} rows of the store: send "everything": true to do '
                                     "it",
    "delete_without_condition": "say what to delete: filters (cameras, sources, tracks, since, until) or older_than",
    "min_score_uncalibrated": "min_score 'auto' needs a bundle calibrated with tbps calibrate, and this one is not: "
                              "give a number",
}

NO_EXPLAIN_GRAPHS = "this bundle has no explain graphs: re-export it with tbps export --explain"
KEY_REQUIRED = "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


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


__all__ = ["FIELDS", "KEY_REQUIRED", "NO_EXPLAIN_GRAPHS", "WORDS", "count_refusal", "for_http", "length_refusal",
           "range_refusal"]
