"""Where a training run's wall time goes: what a user waits for, split by what it was spent on.

The trainer charges each stretch of its main thread to one phase; the wall time is the clock's whole life,
from the process's start for a command-line run, so what no phase claimed shows as `other`. `imports` is
the interpreter's start and the imports before training's own code runs (torch and timm: seconds on a
small machine, the same for any recipe); `startup` is training's own set-up until the first step.

`efficiency` is the share of the run's wall, imports excluded, spent inside training epochs (the steps,
their data wait included): 1.0 would mean set-up, validation, checkpoints and logging cost nothing.
`process_efficiency` divides by the whole wall instead. Written to <run>/timing.json at the end of a run;
`leafnet bench train mode=run` reads it (leafnet/bench/train_run.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# In the order a run meets them; "steps" excludes the data wait, which is its own phase.
PHASES = ("imports", "startup", "steps", "data_wait", "validation", "checkpoint", "logging")


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0 elsewhere): start-up includes the interpreter's
    start and the imports, which a user waits through too."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22, starttime, counted after the ")" that ends the name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class RunClock:
    """`since_process_start`: the wall begins when the process did (a command-line run), not now."""

    def __init__(self, since_process_start: bool = False) -> None:
        imports = process_age() if since_process_start else 0.0
        self.started = time.perf_counter() - imports
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["imports"] = imports
        self.startup_done: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def end_startup(self) -> None:
        """Everything until now was start-up (called once, when the first epoch begins)."""
        if self.startup_done is None:
            self.startup_done = self.elapsed()
            self.seconds["startup"] = self.startup_done - self.seconds["imports"]

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def report(self) -> dict[str, float]:
        """Seconds per phase, `other`, `wall` and both efficiencies, rounded for a JSON file."""
        wall = self.elapsed()
        claimed = sum(self.seconds.values())
        epochs = self.seconds["steps"] + self.seconds["data_wait"]
        report = {name: round(value, 3) for name, value in self.seconds.items()}
        report["other"] = round(max(0.0, wall - claimed), 3)
        report["wall"] = round(wall, 3)
        report["efficiency"] = round(epochs / max(wall - self.seconds["imports"], 1e-9), 4)
        report["process_efficiency"] = round(epochs / max(wall, 1e-9), 4)
        return report


def time_to_accuracy(rows: list[dict], target: float) -> float | None:
    """Wall seconds at the end of the first epoch whose val top-1 reached `target` (metrics.csv's
    `wall_s` and `val_top1`), or None if none did."""
    for row in rows:
        top1 = row.get("val_top1")
        if top1 not in (None, "") and float(top1) >= target:
            return float(row["wall_s"])
    return None
