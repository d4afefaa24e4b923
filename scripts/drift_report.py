"""`python scripts/drift_report.py ...` is `leafnet drift ...` (leafnet/commands/drift.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import drift

if __name__ == "__main__":
    run_command(drift)
