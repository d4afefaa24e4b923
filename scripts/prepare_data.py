"""`python scripts/prepare_data.py ...` is `leafnet prepare ...` (leafnet/commands/prepare.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import prepare

if __name__ == "__main__":
    run_command(prepare)
