"""`python scripts/export.py ...` is `leafnet export ...` (leafnet/commands/export.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import export

if __name__ == "__main__":
    run_command(export)
