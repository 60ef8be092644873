"""``python -m featcache``: the command line (also what ``torchrun -m featcache extract ...`` runs on each rank)."""

from .cli import main

main()
