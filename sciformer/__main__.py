"""`python -m sciformer` (also what `torchrun -m sciformer` runs)."""

from sciformer.cli import main

main()
