"""torch.profiler over a window of training steps, with a trace TensorBoard and Perfetto can open.

The engine labels its phases with record_function ("data", "forward", "backward", "optimizer"),
so the trace and the operator table show where a step's time goes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

logger = logging.getLogger(__name__)


class StepProfiler:
    """Profiles steps wait+1 .. wait+warmup+active of one epoch; `report()` prints the top operators."""

    def __init__(self, out_dir: Path, config) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.top_k = out_dir, config.top_k
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=config.wait, warmup=config.warmup, active=config.active, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(out_dir)),
            record_shapes=config.record_shapes,
        )
        self.sort_key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"

    def __enter__(self) -> StepProfiler:
        self.profiler.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self.profiler.__exit__(*exc)
        return False

    def step(self) -> None:
        self.profiler.step()

    def report(self, log: Callable[[str], None] = logger.info) -> None:
        traces = sorted(self.out_dir.glob("*.pt.trace.json*"))
        if not traces:
            log(f"profiler: no trace written (the epoch had fewer steps than wait+warmup+active); see {self.out_dir}")
            return
        log(self.profiler.key_averages().table(sort_by=self.sort_key, row_limit=self.top_k))
        log(f"profiler trace: {traces[-1]} (open in TensorBoard's profile tab or https://ui.perfetto.dev)")
