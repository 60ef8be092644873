"""The dataset writers of :mod:`featcache.testing.formats`, under the name the tests import them by."""

from featcache.testing.formats import *  # noqa: F403
