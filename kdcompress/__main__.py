"""``python -m kdcompress`` (also what ``torchrun -m kdcompress`` runs)."""

from kdcompress.cli import main

main()
