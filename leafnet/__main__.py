"""`python -m leafnet` is the `leafnet` command (leafnet/commands): `torchrun -m leafnet train ...` too."""

from leafnet.commands import main

main()
