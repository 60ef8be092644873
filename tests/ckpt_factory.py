"""The checkpoint writers of :mod:`featcache.testing.checkpoints`, under the name the tests import them by."""

from featcache.testing.checkpoints import *  # noqa: F403
