"""Makes leafnet.train and leafnet.export callable as the stage functions of leafnet/api.py.

Python binds a submodule to its parent's attribute when it is first imported, so `leafnet.train` is the
training module as soon as anything imported it; a function of that name in leafnet/__init__.py would be
replaced. Calling the module instead runs the stage. leafnet.api is found by name when called: the
pipeline's stages import these modules, never the API.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class _StageModule(ModuleType):
    """A module that, called, runs the leafnet.api function named like the module's last part."""

    def __call__(self, config: Any = None, /, **overrides: Any):
        stage = getattr(importlib.import_module("leafnet.api"), self.__name__.rsplit(".", 1)[-1])
        return stage(config, **overrides)


def callable_module(name: str) -> None:
    """Makes the already imported module `name` callable as its stage."""
    sys.modules[name].__class__ = _StageModule
