"""The twin query split of the part-sensitive synthetic set (``tbps synth --parts``).

``ROOT/twins.json`` lists captions of people who have a twin in the same
split: the same colours on other parts, or identical but for one part. R@1
on these captions alone measures whether a model binds colours to parts.
The file is untrusted input like every annotation file: its paths are
checked against the dataset's image folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tbps_runtime.errors import DataError
from tbps_runtime.paths import resolve_inside
from tbps_train.data.records import ImageRecord

TWINS_FILE = "twins.json"
TWINS_FORMAT = "tbps-twins"


def read_twin_queries(root: str | Path, split: str, records: list[ImageRecord]) -> np.ndarray | None:
    """Rows of ``CaptionTable.from_records(records)`` that are twin queries of ``split``, or None when
    ``root`` has no twins.json (a dataset without a twin split). Returns (T,) int64, sorted.

    Raises:
        DataError: the file is not a twin list, or names a caption that ``records`` do not hold.
    """
    root = Path(root)
    path = root / TWINS_FILE
    if not root.is_dir() or not path.is_file():
        return None
    queries = _load(path)
    first_row, counts = {}, {}
    row = 0
    for record in records:
        key = str(Path(record.image_path).resolve())
        first_row[key], counts[key] = row, len(record.captions)
        row += len(record.captions)
    rows = []
    for i, query in enumerate(queries):
        if query.get("split") != split:
            continue
        image = str(resolve_inside(root / "imgs", str(query.get("file_path")), f"{path} query {i}").resolve())
        index = query.get("caption_index")
        if image not in first_row or not isinstance(index, int) or not 0 <= index < counts[image]:
            raise DataError(f"{path}: query {i} names caption {index!r} of {query.get('file_path')!r}, "
                            f"which the {split} split does not hold")
        rows.append(first_row[image] + index)
    return np.asarray(sorted(set(rows)), dtype=np.int64)


def _load(path: Path) -> list[dict]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the twin split {path}: {e}") from e
    if not isinstance(document, dict) or document.get("format") != TWINS_FORMAT \
            or not isinstance(document.get("queries"), list) \
            or not all(isinstance(q, dict) for q in document["queries"]):
        raise DataError(f"{path} is not a twin split (format {TWINS_FORMAT!r} with a list of queries)")
    return document["queries"]
