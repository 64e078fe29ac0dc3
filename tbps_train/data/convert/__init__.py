"""Converters between the dataset layouts in use: ``tbps data convert``.

The layouts (``--from``/``--to``), each as the public code that reads it has it:

- ``cuhk-original``: ``caption_all.json`` of the CUHK-PEDES release, a list of ``{id, file_path, captions,
  processed_tokens?}``; without a ``split`` field, Li et al.'s split by identity is added
  (:data:`CUHK_STANDARD_SPLIT`).
- ``cuhk-pedes``: ``reid_raw.json`` (the authors' README, IRRA's ``datasets/cuhkpedes.py``), a list of
  ``{split, id, file_path, captions, processed_tokens}``; ``icfg-pedes``: ``ICFG-PEDES.json``, the same
  with splits train and test only; ``rstpreid``: ``data_captions.json``, ``{split, id, img_path, captions}``.
- ``rasa``: ``processed_data/{train,val,test}.json`` as RaSa's ``data_process.py`` writes them: the raw
  entries split by file, RSTPReid's ``img_path`` renamed ``file_path``.
- ``tbps-clip``: ``{train,test}_reid.json`` (TBPS-CLIP's ``misc/caption_dataset.py``): ``{id, file_path,
  captions, captions_bt?}``.
- ``aptm``: ``PREFIX_{train,val,test}.json`` (APTM's ``dataset/re_dataset.py``, e.g. ``cuhk_train.json``):
  train one ``{image, caption, image_id}`` per caption, val/test one ``{image, caption: [..], image_id}``
  per image; ``image_id`` is the identity, ``image`` relative to the folder that holds ``imgs/``.
- ``csv``: ``annotations.csv``, ``image,person_id,caption,split,camera``, a row per caption, read by
  ``--dataset csv``'s own reader (:func:`tbps_train.data.readers.read_csv_dataset`).

Image paths are untrusted (an absolute path or ``..`` is refused, naming the entry); images are never
copied: ``ROOT/imgs`` becomes a relative symbolic link to the input's image folder (or ``--images``).
Captions are stripped, as every reader strips them, and empty ones dropped. Every entry of a JSON input is
checked before anything is written, by the readers' own rules
(:func:`tbps_train.data.formats.parse_entry`), up to 20 problems listed in one :class:`DataError`; the files
are written atomically, then read back (with :func:`tbps_train.data.readers.read_split` for the layouts it
reads) for the per-split summary.

The layouts are rows of :data:`tbps_train.data.formats.LAYOUTS`. The parts: ``reading`` (layouts in),
``writing`` (layouts out), ``images`` (the ``imgs`` link), ``dataset`` (:func:`convert_dataset`: ids and splits
resolved, the result read back); the command, ``tbps data convert``, is in :mod:`tbps_train.cli`.
"""

from tbps_train.data.convert.dataset import (
    CUHK_STANDARD_SPLIT, Conversion, SplitCounts, convert, convert_dataset, standard_cuhk_split,
)
from tbps_train.data.convert.reading import FORMATS, Source, detect_format, read_layout
from tbps_train.data.formats import Entry

__all__ = ["CUHK_STANDARD_SPLIT", "FORMATS", "Conversion", "Entry", "Source", "SplitCounts", "convert",
           "convert_dataset", "detect_format", "read_layout", "standard_cuhk_split"]
