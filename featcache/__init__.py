"""featcache: extract frozen features of pretrained checkpoints once, probe any ensemble of them.

Two phases joined by one on-disk contract, the feature store (:mod:`featcache.store`):
``extract`` runs backbones over a dataset and writes stores; ``probe`` concatenates stores lazily
and fits linear heads without touching a backbone again.
"""

__version__ = "0.1.0"
