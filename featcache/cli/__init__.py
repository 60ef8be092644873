"""The ``featcache`` command: click parses the options, one library call per command does the work.

Every :class:`~featcache.errors.FeatcacheError` becomes a one-line ``Error: ...`` and exit status 1. Modules:
``_app`` (the group, root options, one-line errors), ``_params`` (option types, registry-read help), and one module
per family of commands: ``extract``, ``probe``, ``evaluate``, ``stores`` (ls, verify), ``results`` (results,
report), ``sweep`` (sweep, demo), ``info`` (doctor, list), ``sync``. Importing them registers their commands on
:func:`main`.
"""

from . import evaluate, extract, info, probe, results, stores, sweep, sync  # noqa: F401  (registers the commands)
from ._app import main

__all__ = ["main"]
