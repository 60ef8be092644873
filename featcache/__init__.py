"""featcache: extract frozen features of pretrained checkpoints once, probe any ensemble of them.

Two phases joined by one on-disk contract, the feature store (:mod:`featcache.store`):
``extract`` runs backbones over a dataset and writes stores; ``probe`` concatenates stores lazily
and fits linear heads without touching a backbone again.
"""

__version__ = "0.2.0"

# The Python API (see featcache.api): what notebooks need, the same functions the CLI calls.
from .api import (  # noqa: E402
    StoreSummary,
    list_stores,
    load_head,
    load_results,
    load_split,
    open_store,
    results_table,
)

__all__ = ["__version__", "StoreSummary", "list_stores", "load_head", "load_results", "load_split", "open_store",
           "results_table"]  # fmt: skip
