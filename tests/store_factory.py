"""The store writers of :mod:`featcache.testing.stores`, under the name the tests import them by."""

from featcache.testing.stores import *  # noqa: F403
