"""Dataset readers (CUHK-PEDES, ICFG-PEDES, RSTPReid) and the synthetic person generator."""

from tbps_train.data.readers import DATASETS, dataset_splits, read_split
from tbps_train.data.records import ImageRecord
from tbps_train.data.synth import SynthConfig, generate

__all__ = ["DATASETS", "ImageRecord", "SynthConfig", "dataset_splits", "generate", "read_split"]
