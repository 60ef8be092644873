"""Datasets following torchvision's contract, one module per on-disk format, built from a
:class:`~featcache.config.DatasetSpec` by :func:`build_dataset`.

``_base`` holds the machinery (the :data:`FORMATS` registry, the base classes, ``--limit``'s stratified
subset); ``digits``, ``digits_mix`` (the demo's mixture), ``cifar``, ``folder`` (ImageFolder), ``inat``
(iNaturalist 2018), ``shifted`` (ImageNet-V2, -Sketch, -R, -A) and ``wilds`` (Camelyon17-WILDS) each register their
format when imported, which this package does for all of them.
"""

from ._base import (
    FORMATS,
    IMG_EXTENSIONS,
    ArrayDataset,
    FileDataset,
    ImageDataset,
    build_dataset,
    register,
    stratified_rows,
    to_rgb,
)
from .cifar import CIFAR10, CIFAR100
from .digits import DigitsDataset
from .digits_mix import DigitsMixDataset
from .folder import ImageFolderDataset, dataset_classes, find_classes, make_samples
from .inat import INaturalist2018
from .shifted import ImageNetShift
from .wilds import Camelyon17

__all__ = [
    "FORMATS",
    "IMG_EXTENSIONS",
    "ImageDataset",
    "ArrayDataset",
    "FileDataset",
    "DigitsDataset",
    "DigitsMixDataset",
    "CIFAR10",
    "CIFAR100",
    "ImageFolderDataset",
    "INaturalist2018",
    "ImageNetShift",
    "Camelyon17",
    "build_dataset",
    "dataset_classes",
    "find_classes",
    "make_samples",
    "register",
    "stratified_rows",
    "to_rgb",
]
