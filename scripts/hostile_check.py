"""`python scripts/hostile_check.py ...` is `leafnet hostile ...` (leafnet/commands/hostile.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import hostile

if __name__ == "__main__":
    run_command(hostile)
