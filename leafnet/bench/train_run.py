"""Whole training runs side by side: the wall time a user waits for, and what it buys.

Each variant is a real `leafnet train` in its own process, run one after the other (in turns when
repeated), so that every row is measured on the same machine in the same minutes. A row reports the
process's wall time, the run's own split of it (leafnet/run_clock.py: start-up, steps, data wait,
validation, checkpoints, logging), its efficiency (time in training epochs / wall), the wall seconds
until val top-1 first reached each target (time-to-accuracy, from metrics.csv's wall_s), the best val
top-1, and the test top-1 of the best checkpoint.

`BASELINE_VARIANTS` keep the recipe and the code paths of the day issue 19 was filed under their name
"before", beside the defaults as "after": the benchmark is its own before/after table (docs/training.md).
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import leafnet
from leafnet.errors import LeafnetError
from leafnet.evaluation import EvalConfig, evaluate_checkpoint
from leafnet.run_clock import PHASES, time_to_accuracy

# The demo recipe before issue 19: 26 epochs in float32 without a weight average; timm's PIL pipeline with
# the rotation of the whole prepared image first; every image decoded every epoch by 2 workers; validation
# batches of 128; last.pt and best.pt each serialised inline; torch's foreach AdamW; glibc's default return of
# freed memory to the kernel. (best.pt is now a link in both rows.)
BEFORE = [
    "schedule.epochs=26",
    "amp.dtype=none",
    "ema.enabled=false",
    "data.augment.implementation=timm",
    "data.cache_mb=0",
    "data.workers=2",
    "data.eval_batch_size=128",
    "checkpoint.background=false",
    "optim.fused=false",
    "train.keep_freed_memory=false",
]
BASELINE_VARIANTS = {"before": BEFORE, "after": []}


def run_package() -> Path:
    """The leafnet package a run imports: `python -m leafnet` from this directory puts it first on the path,
    so a checkout here wins over the one this process (or an editable install) imported."""
    found = subprocess.run(
        [sys.executable, "-c", "import leafnet, pathlib; print(pathlib.Path(leafnet.__file__).parent)"],
        capture_output=True,
        text=True,
    )
    return Path(found.stdout.strip()) if found.returncode == 0 else Path(leafnet.__file__).parent


def source_fingerprint(package: Path) -> str:
    """A digest of every file of the leafnet package that a run executes or reads its defaults from. Each
    variant is a fresh `leafnet train` importing the package as it is on disk at that moment, so an edit
    during a benchmark would silently change the later runs: the benchmark compares this after each run."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_variant(
    name: str, overrides: list[str], base: list[str], output: Path, log, holdout: str | None = None
) -> dict:
    """One `leafnet train` in a fresh process, then its best checkpoint on the test split (and on `holdout`'s
    test split, when given). `base` comes first, so a variant's own overrides win."""
    run_name = name.replace("/", "_").replace(" ", "_")
    command = [sys.executable, "-m", "leafnet", "train", f"train.output_dir={output}", f"train.name={run_name}"]
    command += [*base, *overrides]
    log(f"{name}: {' '.join(command[3:])}")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    process_wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LeafnetError(f"variant {name!r}: training failed ({done.returncode}): {tail[0]}")
    run_dir = output / run_name
    timing = json.loads((run_dir / "timing.json").read_text())
    rows = read_metrics(run_dir / "metrics.csv")
    vals = [float(r["val_top1"]) for r in rows if r.get("val_top1")]
    best = str(run_dir / "checkpoints" / "best.pt")
    test = evaluate_checkpoint(EvalConfig(checkpoint=best, split="test", output=str(run_dir)), log=lambda _: None)
    scores = {"test_top1": test["top1"], "test_count": test["count"]}
    if holdout:
        held = EvalConfig(checkpoint=best, split="test", data=holdout, output=str(run_dir / "holdout"))
        report = evaluate_checkpoint(held, log=lambda _: None)
        scores |= {"holdout_top1": report["top1"], "holdout_count": report["count"]}
    return {
        "process_wall_s": round(process_wall, 2),
        "timing": timing,
        "epochs": len(rows),
        "wall_s_per_epoch": [round(float(r["wall_s"]), 2) for r in rows],
        "val_top1_per_epoch": [round(float(r["val_top1"]), 4) if r.get("val_top1") else None for r in rows],
        "best_val_top1": max(vals) if vals else None,
        **scores,
    }


def summarise(runs: list[dict], targets: list[float]) -> dict:
    """A variant's row: the median over its repeats of each figure (the one run's figures when once)."""

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    row = {"repeats": len(runs), "epochs": runs[0]["epochs"]}
    row["process_wall_s"] = median([r["process_wall_s"] for r in runs])
    for key in (*PHASES, "other", "wall", "efficiency", "process_efficiency"):
        row[key] = median([r["timing"][key] for r in runs])
    for target in targets:
        reached = [time_to_accuracy(_rows(r), target) for r in runs]
        row[f"time_to_{target:g}"] = median(reached) if all(t is not None for t in reached) else None
    row["best_val_top1"] = median([r["best_val_top1"] for r in runs])
    for key in ("test_top1", "holdout_top1"):
        if key in runs[0]:
            row[key] = median([r[key] for r in runs])
            row[f"{key}_range"] = [min(r[key] for r in runs), max(r[key] for r in runs)]
    row["runs"] = runs
    return row


def _rows(run: dict) -> list[dict]:
    return [
        {"wall_s": wall, "val_top1": top1}
        for wall, top1 in zip(run["wall_s_per_epoch"], run["val_top1_per_epoch"], strict=True)
    ]


def run_time_to_accuracy(
    variants: dict[str, list[str]],
    base: list[str],
    targets: list[float],
    turns: list[list[str]],
    output: Path,
    log,
    holdout: str | None = None,
) -> dict:
    """`turns`: one list of overrides per turn, applied after `base` (a seed per turn, or nothing);
    `holdout`: a prepared data root whose test split also scores each run."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    package = run_package()
    source = source_fingerprint(package)
    for turn, turn_overrides in enumerate(turns):  # in turns, so drift over the minutes touches every variant alike
        for name, overrides in variants.items():
            label = name if len(turns) == 1 else f"{name}#{turn + 1}"
            turn_dir = output / f"turn{turn + 1}"
            runs[name].append(run_variant(name, overrides, [*base, *turn_overrides], turn_dir, log, holdout))
            if source_fingerprint(package) != source:
                raise LeafnetError(
                    f"leafnet's source changed during the benchmark, by the end of run {label}: its runs would not "
                    "all be the same code; leave the tree alone while it runs and start it again"
                )
            log(f"{label}: {_brief(runs[name][-1], targets)}")
    rows = {name: summarise(found, targets) for name, found in runs.items()}
    first = next(iter(rows.values()))
    for row in rows.values():
        for target in targets:
            key = f"time_to_{target:g}"
            if row[key] is not None and first[key]:
                row[f"{key}_vs_first"] = round(row[key] / first[key], 3)
        row["wall_vs_first"] = round(row["wall"] / first["wall"], 3)
    log(format_run_table(rows, targets))
    return {
        "mode": "run",
        "base": base,
        "targets": targets,
        "repeats": len(turns),
        "turns": turns,
        "holdout": holdout,
        "source_sha256": source,
        "variants": rows,
    }


def _brief(run: dict, targets: list[float]) -> str:
    reached = [f"{t:.0%} at {_seconds(time_to_accuracy(_rows(run), t))}s" for t in targets]
    holdout = f", holdout {run['holdout_top1']:.2%}" if "holdout_top1" in run else ""
    return (
        f"wall {run['timing']['wall']:.1f}s (process {run['process_wall_s']:.1f}s), efficiency "
        f"{run['timing']['efficiency']:.1%}, val {', '.join(reached)}, best val {run['best_val_top1']:.2%}, "
        f"test {run['test_top1']:.2%}{holdout}"
    )


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_run_table(rows: dict[str, dict], targets: list[float]) -> str:
    reach = [f"val {t:.0%} at s (ratio)" for t in targets]
    header = ["variant", "epochs", "process s", "wall s", *PHASES, "other", "efficiency", "of process", *reach]
    held = all("holdout_top1" in row for row in rows.values())
    header += ["best val", "test top-1 (runs' range)", *(["holdout top-1 (runs' range)"] if held else [])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, row in rows.items():
        cells = [name, str(row["epochs"]), _seconds(row["process_wall_s"]), _seconds(row["wall"])]
        cells += [_seconds(row[phase]) for phase in (*PHASES, "other")]
        cells += [f"{row['efficiency']:.1%}", f"{row['process_efficiency']:.1%}"]
        for target in targets:
            key = f"time_to_{target:g}"
            ratio = row.get(f"{key}_vs_first")
            if row[key] is None:
                cells.append("not reached")
            else:
                cells.append(f"{row[key]:.1f}" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
        cells.append(f"{row['best_val_top1']:.2%}")
        for key in ("test_top1", *(["holdout_top1"] if held else [])):
            low, high = row[f"{key}_range"]
            cells.append(f"{row[key]:.2%}" + (f" ({low:.2%} to {high:.2%})" if row["repeats"] > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
