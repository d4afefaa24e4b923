"""Configuration: a typed schema (dataclass) + optional YAML files + `key=value` overrides.

Every command line in leafnet reads its options through `load_config`, so all of them accept
`--config FILE` (repeatable, later files win) and OmegaConf dotlist overrides, reject unknown keys
and mistyped values with one line that names the key, and can save the resolved result.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
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

    def merge(config):
        for file in [*files, *arg_files]:
            path = Path(file)
            if not path.is_file():
                raise LeafnetError(f"config file not found: {path}")
            config = OmegaConf.merge(config, OmegaConf.load(path))
        return OmegaConf.merge(config, OmegaConf.from_dotlist(overrides))

    return _built(schema, merge)


def build_config(schema: type[T], config: T | dict | str | Path | None = None, **overrides: Any) -> T:
    """The Python API's twin of load_config: `schema`'s defaults, then `config` (an instance of it, a dict
    or a YAML file), then keyword overrides, each a field or a dotted path (`**{"optim.lr": 0.01}`), a
    section's value a dict of its fields. Unknown keys and mistyped values fail as on the command line."""

    def merge(merged):
        if isinstance(config, str | Path):
            if not Path(config).is_file():
                raise LeafnetError(f"config file not found: {config}")
            merged = OmegaConf.merge(merged, OmegaConf.load(config))
        elif isinstance(config, dict):
            merged = OmegaConf.merge(merged, OmegaConf.create(config))
        elif config is not None:
            if not isinstance(config, schema):
                raise LeafnetError(f"expected a {schema.__name__}, a dict or a YAML file, got {type(config).__name__}")
            merged = OmegaConf.structured(config)
        for key, value in overrides.items():
            if OmegaConf.select(merged, key, default=_MISSING) is _MISSING:
                raise LeafnetError(f"unknown option {key!r} for {schema.__name__}")
            nested = value
            for part in reversed(key.split(".")):
                nested = {part: nested}
            merged = OmegaConf.merge(merged, nested)  # a merge, not an update: some sections are frozen
        return merged

    return _built(schema, merge)


_MISSING = object()


def _built(schema: type[T], merge) -> T:
    """`merge(schema's structured defaults)` resolved into a schema instance; OmegaConf's and YAML's errors
    as one line each."""
    try:
        config = merge(OmegaConf.structured(schema))
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


_FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s*(.*))?$")


def field_descriptions(schema: type) -> dict[str, str]:
    """Each field's description, from the schema's source: its trailing comment, else the comment lines
    right above it. The dataclasses are the one source of defaults and their documentation: `--help` and
    the annotated config/*.yaml are both rendered from them."""
    try:
        lines = inspect.getsource(schema).splitlines()
    except (OSError, TypeError):  # no source (a frozen app): the defaults still print, undescribed
        return {}
    names = {f.name for f in dataclasses.fields(schema)}
    descriptions, above = {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in names:
            descriptions[match.group(1)] = (match.group(2) or " ".join(above)).strip()
        above = []
    return descriptions


def describe(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) of every leaf option of a dataclass instance, in field order."""
    rows = []
    descriptions = field_descriptions(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{key}.")
        else:
            rows.append((key, value, descriptions.get(f.name, "")))
    return rows


def annotated_yaml(config: Any, indent: str = "") -> str:
    """The defaults of a dataclass instance as YAML, each key with its description as a comment."""
    out = []
    descriptions = field_descriptions(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        note = descriptions.get(f.name, "")
        if dataclasses.is_dataclass(value):
            out.append(f"{indent}{f.name}:" + (f"  # {note}" if note else ""))
            out.append(annotated_yaml(value, indent + "  ").rstrip("\n"))
            if not indent:
                out.append("")
            continue
        rendered = yaml.safe_dump(_plain(value), default_flow_style=True, width=1000).strip()
        rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
        line = f"{indent}{f.name}: {rendered}"
        out.append(f"{line:<40} # {note}" if note else line)
    return "\n".join(out).rstrip("\n") + "\n"


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_file_text(config: Any, source: str) -> str:
    """An annotated YAML file of `config`'s defaults, as config/*.yaml holds them for reading and copying."""
    header = (
        f"# Every option and its default, generated from {source} (`make config-docs`): edit the dataclasses,\n"
        "# not this file (a test keeps the two equal). Scripts need no file: a copy of this one, edited, is a\n"
        "# starting point for `--config FILE`; single options change with key=value on the command line.\n\n"
    )
    return header + annotated_yaml(config)
