"""`python scripts/generate_data.py ...` is `leafnet generate ...` (leafnet/commands/generate.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import generate

if __name__ == "__main__":
    run_command(generate)
