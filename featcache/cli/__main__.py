"""``python -m featcache.cli``, used by pipeline/ scripts and subprocess tests."""

from . import main

main()
