"""Train a classifier: `leafnet train key=value ...`, or under DDP `torchrun --nproc_per_node=N -m leafnet train ...`.

Defaults are leafnet.train_config's (config/train.yaml lists them), then `--config FILE` and `key=value`
overrides, e.g. model.name=resnet34 schedule.epochs=50.
"""

from leafnet.allocator import keep_freed_memory
from leafnet.config import load_config
from leafnet.run_clock import RunClock
from leafnet.train import main as train
from leafnet.train_config import TrainConfig


def main(argv: list[str]) -> None:
    # The wall a user waits for starts with this process: the imports count (leafnet/run_clock.py).
    clock = RunClock(since_process_start=True)
    cfg = load_config(TrainConfig, argv)
    if cfg.train.keep_freed_memory:
        # Here and not in leafnet.train.main: it holds for the rest of the process, which is leafnet's own only
        # when it runs this command (a library caller's keeps its allocator as it was). Loader workers fork
        # from this process later and inherit it.
        keep_freed_memory()
    train(cfg, clock)


CONFIG = TrainConfig  # the options and their defaults (`leafnet train --help` lists them)
