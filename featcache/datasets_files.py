"""Compatibility: ImageFolder and iNat18 live in :mod:`featcache.datasets.folder` and :mod:`featcache.datasets.inat`."""

from .datasets.folder import ImageFolderDataset, dataset_classes, find_classes, make_samples
from .datasets.inat import INaturalist2018

__all__ = ["ImageFolderDataset", "INaturalist2018", "find_classes", "dataset_classes", "make_samples"]
