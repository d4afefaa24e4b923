"""The `leafnet` command: one subcommand per stage, each a module of this package with `main(argv)`,
`CONFIG` (the dataclass of its options) and a docstring whose first line is its summary.

    leafnet --help                 every command, one line each
    leafnet train --help           every option of one command, with its default and meaning
    leafnet bench onnx key=value   subcommands of a group: bench {data,train,finetune,onnx,predict,serving}

`python -m leafnet` is the same command (so `torchrun -m leafnet train ...` runs it under DDP), and
`scripts/*.py` are thin aliases (`python scripts/train.py` = `leafnet train`). A command's module is
imported only when it runs: `leafnet --help` reads the summaries from the sources, without torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

# command words -> module of this package, in the order `leafnet --help` lists them
COMMANDS: dict[tuple[str, ...], str] = {
    ("generate",): "generate",
    ("prepare",): "prepare",
    ("train",): "train",
    ("evaluate",): "evaluate",
    ("export",): "export",
    ("predict",): "predict",
    ("calibration",): "calibration",
    ("ood",): "ood",
    ("serve",): "serve",  # start, stop, status: one module, one set of options (leafnet/commands/serve.py)
    ("drift",): "drift",
    ("baseline",): "baseline",
    ("bench", "data"): "bench_data",
    ("bench", "train"): "bench_train",
    ("bench", "finetune"): "bench_finetune",
    ("bench", "onnx"): "bench_onnx",
    ("bench", "predict"): "bench_predict",
    ("bench", "serving"): "bench_serving",
    ("hostile",): "hostile",
    ("gpu-check",): "gpu_check",
}


def summary(module: str) -> str:
    """The first line of a command module's docstring, read from its source without importing it."""
    origin = importlib.util.find_spec(f"{__name__}.{module}").origin
    with open(origin, encoding="utf-8") as source:
        docstring = ast.get_docstring(ast.parse(source.read())) or ""
    return docstring.split("\n", 1)[0].split(":", 1)[0].strip()


def usage() -> str:
    width = max(len(" ".join(words)) for words in COMMANDS)
    lines = ["usage: leafnet COMMAND [key=value ...] [--config FILE] [-q|-v] [-h]", "", "commands:"]
    lines += [f"  {' '.join(words):<{width}}  {summary(module)}" for words, module in COMMANDS.items()]
    lines += ["", "`leafnet COMMAND --help` lists every option of a command with its default and meaning."]
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[str | None, list[str]]:
    """(module, the arguments after the command words), or (None, argv) for no or an unknown command."""
    for words, module in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            return module, argv[len(words) :]
    return None, argv


def main(argv: list[str] | None = None) -> None:
    from leafnet.cli import run_command

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0)
    module, rest = resolve(argv)
    if module is None:
        groups = {words[0] for words in COMMANDS if len(words) > 1}
        if argv[0] in groups:
            options = ", ".join(" ".join(w) for w in COMMANDS if w[0] == argv[0])
            print(f"error: leafnet {argv[0]} needs a subcommand: {options}", file=sys.stderr)
        else:
            print(f"error: unknown command {argv[0]!r}: `leafnet --help` lists the commands", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"leafnet {' '.join(argv[: len(argv) - len(rest)])}", *rest]
    run_command(importlib.import_module(f"{__name__}.{module}"))
