"""Configuration: a typed schema (dataclass) + optional YAML files + `key=value` overrides.

Every command line in leafnet reads its options through `load_config`, so all of them accept
`--config FILE` (repeatable, later files win) and OmegaConf dotlist overrides, reject unknown keys
and mistyped values with one line that names the key, and can save the resolved result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException, ValidationError

from leafnet.errors import LeafnetError

T = TypeVar("T")


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config FILE` / `--config=FILE` from `key=value` overrides."""
    files, overrides = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            value = next(args, None)
            if value is None:
                raise LeafnetError("--config needs a file name")
            files.append(value)
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise LeafnetError(f"unexpected argument {arg!r}: use key=value overrides or --config FILE")
    return files, overrides


def _describe(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    if isinstance(error, ConfigKeyError):
        return f"unknown config key {key!r}" if key else message
    if isinstance(error, ValidationError):
        return f"bad value for {key!r}: {message}" if key else message
    if isinstance(error, InterpolationResolutionError):
        return f"cannot resolve {key!r}: {message}" if key else message
    return message


def load_config(schema: type[T], argv: list[str] | None = None, files: list[str | Path] = ()) -> T:
    """Builds a `schema` instance from its defaults, YAML files, then `key=value` overrides."""
    arg_files, overrides = split_args(list(argv or []))
    config = OmegaConf.structured(schema)
    try:
        for file in [*files, *arg_files]:
            path = Path(file)
            if not path.is_file():
                raise LeafnetError(f"config file not found: {path}")
            config = OmegaConf.merge(config, OmegaConf.load(path))
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(overrides))
        OmegaConf.resolve(config)
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise LeafnetError(_describe(error)) from None
    except (TypeError, UnicodeDecodeError) as error:  # e.g. a YAML file holding a list, or not UTF-8
        raise LeafnetError(f"cannot load configuration: {error}") from None
    except yaml.YAMLError as error:  # a malformed override value or config file
        where = " ".join(str(error).split())
        raise LeafnetError(f"cannot parse configuration: {where}") from None


def to_yaml(config: Any) -> str:
    """The resolved config as YAML, for run directories and `--help`."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
