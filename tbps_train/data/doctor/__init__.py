"""The dataset doctor behind ``tbps data check``: everything wrong with a dataset root, in one report.

:func:`~tbps_train.data.readers.read_split` stops at the first problem; the
doctor scans the whole root and reports each problem once, grouped, with what
to do about it. Severity follows what tbps would do with the data:

* **error**: ``tbps train`` / ``tbps eval`` refuse the root or fail on it (no
  annotation file, unreadable JSON, an entry that does not parse, a path that
  escapes ``imgs/``, an image without a caption, a missing, empty or
  undecodable image, an empty split);
* **warning**: it would run, but the result is not what the paper's numbers
  assume (split sizes off the published figures, identities shared between
  splits, empty captions dropped, one caption for several people, captions the
  model truncates).

Status: 0 clean, 1 warnings only, 2 unusable. Each dataset's file layout is
read by a small adapter (:class:`DatasetAdapter`, in ``adapters``) over the one
table of layouts (:mod:`tbps_train.data.formats`); the checks only see
:class:`Entry` rows, so a new layout needs a row in that table (or an adapter)
and nothing else. The parts: ``check`` (:func:`check_dataset`), ``annotations``
(entries, splits, identities, captions), ``images``, ``alternatives`` (what a
root holds instead of the annotation file), ``tokens`` (caption lengths),
``figures`` (the published split sizes) and ``report`` (the report and its text).
"""

from tbps_train.data.doctor.adapters import ADAPTERS, CsvAdapter, DatasetAdapter, JsonListAdapter
from tbps_train.data.doctor.check import DEFAULT_IMAGES_SAMPLE, check_dataset
from tbps_train.data.doctor.figures import PUBLISHED, PUBLISHED_NOTES, PUBLISHED_SOURCE, WHOLE_DATASET, Figures
from tbps_train.data.doctor.report import (
    CLEAN, MAX_EXAMPLES, SECTIONS, UNUSABLE, WARNINGS, Problem, Report, format_report,
)
from tbps_train.data.doctor.tokens import TokenCounter, preset_token_counter, word_counter
from tbps_train.data.formats import Entry

__all__ = [
    "ADAPTERS", "CLEAN", "DEFAULT_IMAGES_SAMPLE", "MAX_EXAMPLES", "PUBLISHED", "PUBLISHED_NOTES", "PUBLISHED_SOURCE",
    "SECTIONS", "UNUSABLE", "WARNINGS", "WHOLE_DATASET", "CsvAdapter", "DatasetAdapter", "Entry", "Figures",
    "JsonListAdapter", "Problem", "Report", "TokenCounter", "check_dataset", "format_report", "preset_token_counter",
    "word_counter",
]
