"""Datasets for every task, in one registry (:mod:`imrec.data.registry`): classification
built-ins and your own folders here, detection sets in :mod:`imrec.data.detection`.

Example:
    >>> from imrec.data import list_datasets, load_dataset
    >>> "mnist" in list_datasets()
    True
    >>> data = load_dataset("digits", val_fraction=0.1)
    >>> data.num_classes, data.channels
    (10, 1)
"""

from imrec.data.datasets import (
    DatasetInfo,
    convert_channels,
    dataset_info,
    fetch_dataset,
    ink_stats,
    list_datasets,
    load_dataset,
    register_dataset,
    resize_images,
)
from imrec.data.detection import list_detection_datasets, load_detection
from imrec.data.folder import load_folder, resize_center_crop
from imrec.data.idx import read_idx, write_idx
from imrec.data.letters import load_letters
from imrec.data.registry import dataset_task
from imrec.data.sources import DatasetError, SourceFile, dataset_dir, imrec_home
from imrec.data.splits import group_split, stratified_split
from imrec.data.types import ClassificationData, ImageSet

__all__ = [
    "ClassificationData",
    "DatasetError",
    "DatasetInfo",
    "ImageSet",
    "SourceFile",
    "convert_channels",
    "dataset_dir",
    "dataset_task",
    "dataset_info",
    "fetch_dataset",
    "group_split",
    "imrec_home",
    "ink_stats",
    "list_datasets",
    "list_detection_datasets",
    "load_dataset",
    "load_detection",
    "load_folder",
    "load_letters",
    "read_idx",
    "register_dataset",
    "resize_center_crop",
    "resize_images",
    "stratified_split",
    "write_idx",
]
