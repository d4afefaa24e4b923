"""Where `leafnet predict` puts its answers: a table on stdout (path, top-1 label, probability), or with
--output a CSV or JSON Lines file chosen by its extension (path, top-k labels and probabilities, model
version, the truth when known, and the reason of each refused image), written atomically at the end.
Answers made with test-time augmentation name its mode: a `tta` column in the table and the CSV, a "tta"
field in JSON Lines; without it, nothing is added. Every answer says whether the image is `unknown` (its
out-of-distribution score above the model's threshold; empty or null for a model without calibration) and
its `confidence`, the calibrated top-1 probability.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from leafnet.errors import LeafnetError
from leafnet.fsutil import atomic_write_bytes
from leafnet.predict import Outcome

FORMATS = (".csv", ".jsonl")


def checked_output(output: str | None) -> Path | None:
    """The --output path, refused before any work when its extension names no format."""
    if output is None:
        return None
    path = Path(output)
    if path.suffix.lower() not in FORMATS:
        raise LeafnetError(f"--output {path}: the extension picks the format, one of {', '.join(FORMATS)}")
    if path.is_dir():
        raise LeafnetError(f"--output {path} is a folder; name a file")
    return path


def beside(output: Path, suffix: str) -> Path:
    """A file next to the output, e.g. preds.csv -> preds.audit.json."""
    return output.with_name(output.stem + suffix)


def tta_mode(outcomes: list[Outcome]) -> str | None:
    """The test-time augmentation the answers were made with, None when none (one pass, as served)."""
    return next((o.answer.get("tta") for o in outcomes if o.answer is not None), None)


def table(outcomes: list[Outcome]) -> str:
    """The answered images, one line each: path, top-1 label, its probability, whether it is unknown (and
    the tta mode, if any)."""
    rows = [(o.name, o.answer["predictions"][0], _unknown(o.answer)) for o in outcomes if o.answer is not None]
    width = max([len("path"), *(len(name) for name, _, _ in rows)])
    label_width = max([len("label"), *(len(top["label"]) for _, top, _ in rows)])
    mode = tta_mode(outcomes)
    tail = f"  {mode}" if mode else ""
    lines = [f"{'path':<{width}}  {'label':<{label_width}}  probability  unknown{'  tta' if mode else ''}"]
    lines += [
        f"{name:<{width}}  {top['label']:<{label_width}}  {top['probability']:11.6f}  {unknown:<7}{tail}"
        for name, top, unknown in rows
    ]
    return "\n".join(lines) + "\n"


def _unknown(answer: dict) -> str:
    """yes / no, or - for a model without calibration."""
    return {True: "yes", False: "no"}.get(answer.get("unknown"), "-")


def write_output(path: Path, outcomes: list[Outcome], top_k: int, truth: list[str | None] | None) -> None:
    """Every outcome, answered or refused, in input order; `truth`: each one's true label, when known."""
    truth = truth or [None] * len(outcomes)
    text = _jsonl(outcomes, top_k, truth) if path.suffix.lower() == ".jsonl" else _csv(outcomes, top_k, truth)
    atomic_write_bytes(path, text.encode(errors="surrogateescape"))  # file names as the system gave them


def _csv(outcomes: list[Outcome], top_k: int, truth: list[str | None]) -> str:
    ranks = [f"{column}_{rank}" for rank in range(1, top_k + 1) for column in ("label", "probability")]
    known = any(label is not None for label in truth)
    tta = ["tta"] if tta_mode(outcomes) else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    calibrated = ["confidence", "unknown", "ood_score"]  # after error: the older columns keep their positions
    writer.writerow(["path", *ranks, "model_version", *tta, *(["truth"] if known else []), "error", *calibrated])
    for outcome, label in zip(outcomes, truth, strict=True):
        answer = outcome.answer or {}
        predictions = answer.get("predictions", [])[:top_k]
        cells = [value for p in predictions for value in (p["label"], p["probability"])]
        cells += [""] * (2 * top_k - len(cells))
        cells += [answer.get("model_version", ""), *(answer.get(key, "") for key in tta)]
        cells += [*([label or ""] if known else []), outcome.error or ""]
        writer.writerow([outcome.name, *cells, *(_cell(answer.get(key)) for key in calibrated)])
    return buffer.getvalue()


def _jsonl(outcomes: list[Outcome], top_k: int, truth: list[str | None]) -> str:
    lines = []
    for outcome, label in zip(outcomes, truth, strict=True):
        record: dict = {"path": outcome.name}
        answer = outcome.answer
        if answer is not None:
            record.update(predictions=answer["predictions"][:top_k], model_version=answer["model_version"])
            record.update({key: answer.get(key) for key in ("confidence", "unknown", "ood_score")})
            if "tta" in answer:
                record["tta"] = answer["tta"]
        else:
            record.update(error=outcome.error, kind=outcome.kind)
        if label is not None:
            record["truth"] = label
        lines.append(json.dumps(record))
    return "".join(line + "\n" for line in lines)


def _cell(value) -> str | float:
    """A CSV cell: booleans as true/false, missing values empty."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else value
