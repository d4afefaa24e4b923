"""Served drift records: the handler's `LEAFNET_DRIFT {json}` lines, read back and narrowed to a window.

TorchServe writes them into model_log.log behind its own prefix (time, level, worker, MODEL_LOG); log4j
rolls old days into model_log.<day>.log.gz. Any text holding such lines works (a grep of the logs, a
log service's export), and so do JSON lines holding the bare records. Other lines are skipped; a line
that carries the prefix but no valid record is counted and reported, never dropped in silence.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from leafnet.errors import LeafnetError
from leafnet.serving.image_stats import DRIFT_LOG_PREFIX

MARKER = DRIFT_LOG_PREFIX + " "


@dataclass(frozen=True)
class Record:
    t: float  # Unix time of the answer
    model: str  # TorchServe model name
    version: str  # model version of the archive
    stats_version: int
    features: dict[str, float]
    top1: int
    p: float  # top-1 probability
    unknown: bool | None = None  # judged out-of-distribution; None: a model without calibration, or an old line


@dataclass
class Parsed:
    records: list[Record] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # "file:line: reason"
    lines: int = 0


def log_files(logs: str) -> list[Path]:
    """A file, a directory (its model_log*.log and rotated .log.gz files) or a glob pattern."""
    path = Path(logs)
    if path.is_dir():
        files = sorted(path.glob("model_log*.log*"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(logs) if Path(p).is_file())
    if not files:
        raise LeafnetError(
            f"no log files at {logs}: pass logs= a model_log.log, the folder TorchServe logs into "
            "(LOG_LOCATION, runs/torchserve for leafnet serve) or a glob"
        )
    return files


def _number(record: dict, key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key!r} is not a finite number")
    return float(value)


def parse_record(record: object) -> Record:
    """A Record from one decoded JSON object; ValueError names what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    features = record.get("features")
    if not isinstance(features, dict) or not features:
        raise ValueError("no 'features' object")
    top1 = record.get("top1")
    if isinstance(top1, bool) or not isinstance(top1, int) or top1 < 0:
        raise ValueError("'top1' is not a class index")
    p = _number(record, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"'p' = {p} is not a probability")
    unknown = record.get("unknown")
    if unknown is not None and not isinstance(unknown, bool):
        raise ValueError("'unknown' is neither true, false nor null")
    stats_version = record.get("stats_version")
    if isinstance(stats_version, bool) or not isinstance(stats_version, int):
        raise ValueError("'stats_version' is not an integer")
    return Record(
        t=_number(record, "t"),
        model=str(record.get("model", "")),
        version=str(record.get("version", "")),
        stats_version=stats_version,
        features={str(name): _number(features, name) for name in features},
        top1=top1,
        p=p,
        unknown=unknown,
    )


def _payload(line: str) -> str | None:
    """The JSON text of a drift line, or None for a line that is no drift record."""
    start = line.find(MARKER)
    if start >= 0:
        return line[start + len(MARKER) :].strip()
    stripped = line.strip()
    if stripped.startswith("{") and '"features"' in stripped:  # JSON lines holding bare records
        return stripped
    return None


def read_records(files: list[Path]) -> Parsed:
    parsed = Parsed()
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        try:
            with opener(file, "rt", encoding="utf-8", errors="replace") as lines:
                for number, line in enumerate(lines, 1):
                    parsed.lines += 1
                    payload = _payload(line)
                    if payload is None:
                        continue
                    try:
                        parsed.records.append(parse_record(json.loads(payload)))
                    except ValueError as error:  # JSONDecodeError is a ValueError
                        parsed.malformed.append(f"{file}:{number}: {str(error).splitlines()[0]}")
        except (OSError, EOFError) as error:  # unreadable, or a gzip cut short by rotation
            raise LeafnetError(f"cannot read log file {file}: {error}") from None
    return parsed


def parse_time(text: str | None, key: str) -> float | None:
    """Unix time of an ISO 8601 time (UTC unless it names a zone)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        raise LeafnetError(
            f"{key}={text!r} is not an ISO 8601 time, e.g. 2025-06-01T12:00 or 2025-06-01T12:00+02:00"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _kinds(records: list[Record], key: str) -> str:
    return ", ".join(sorted({str(getattr(r, key)) for r in records})[:5])


def select_window(
    records: list[Record],
    size: int,
    since: float | None = None,
    until: float | None = None,
    model: str | None = None,
    version: str | None = None,
) -> list[Record]:
    """The last `size` records, by time, of `model` and `version` (None: any) answered in [since, until]."""
    kept = records
    if model is not None:
        kept = [r for r in kept if r.model == model]
        if not kept:
            raise LeafnetError(f"no drift records of model {model!r}; the logs hold models {_kinds(records, 'model')}")
    if version is not None:
        chosen = [r for r in kept if r.version == version]
        if not chosen:
            raise LeafnetError(
                f"no drift records of model version {version} (the reference's); the logs hold versions "
                f"{_kinds(kept, 'version')}: pass the reference of the served export, or any_version=true"
            )
        kept = chosen
    timed = [r for r in kept if (since is None or r.t >= since) and (until is None or r.t <= until)]
    if not timed:
        span = f"{iso(min(r.t for r in kept))} to {iso(max(r.t for r in kept))}"
        raise LeafnetError(f"no drift records in the time range given by since=/until=; the records span {span}")
    return sorted(timed, key=lambda r: r.t)[-size:]
