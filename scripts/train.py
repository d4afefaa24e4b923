"""`python scripts/train.py ...` is `leafnet train ...` (leafnet/commands/train.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import train

if __name__ == "__main__":
    run_command(train)
