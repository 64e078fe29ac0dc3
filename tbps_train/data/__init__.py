"""Dataset readers (CUHK-PEDES, ICFG-PEDES, RSTPReid); the synthetic generators are ``tbps_runtime.synth``."""

from tbps_train.data.readers import DATASETS, dataset_splits, read_split
from tbps_train.data.records import ImageRecord

__all__ = ["DATASETS", "ImageRecord", "dataset_splits", "read_split"]
