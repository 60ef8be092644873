"""Compatibility: the datasets live in :mod:`featcache.datasets`, one module per format; import from there."""

from . import datasets
from .datasets import *  # noqa: F403

__all__ = datasets.__all__
