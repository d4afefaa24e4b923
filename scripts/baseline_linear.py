"""`python scripts/baseline_linear.py ...` is `leafnet baseline ...` (leafnet/commands/baseline.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import baseline

if __name__ == "__main__":
    run_command(baseline)
