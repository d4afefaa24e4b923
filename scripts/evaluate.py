"""`python scripts/evaluate.py ...` is `leafnet evaluate ...` (leafnet/commands/evaluate.py):
kept for DVC, torchrun and existing habits."""

from leafnet.cli import run_command
from leafnet.commands import evaluate

if __name__ == "__main__":
    run_command(evaluate)
