"""Progress bars that show on a terminal and stay silent in CI logs and pipes."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """tqdm with `disable=None`: drawn only when stderr is a terminal."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", None)
    return tqdm(iterable, **kwargs)
