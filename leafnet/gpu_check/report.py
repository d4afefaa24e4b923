"""The results file of `leafnet gpu-check`: one JSON document with a section per check, each `ok`, `failed` or
`skipped` with a one-line `reason` and its `seconds`. The file is rewritten after every check, so a run cut
short still leaves the checks it finished."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from leafnet.fsutil import write_json

logger = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
FORMAT = 1
MAX_REASON_CHARS = 300


class Skip(Exception):  # noqa: N818 (a verdict, not an error)
    """Raised by a check that cannot run here; its message is the reason (what is missing, what would fix it)."""


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message, capped."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


class Report:
    """The document being built and the file it is written to."""

    def __init__(self, path: Path, header: dict, selected: list[str], always: tuple[str, ...] = ()) -> None:
        """selected: the checks asked for; always: sections that run whether asked for or not (the data)."""
        self.path, self.selected, self.always = path, selected, always
        self.document = {"format": FORMAT, **header, "checks": {}}
        self.started = time.perf_counter()
        self.write()

    def section(self, name: str) -> dict | None:
        return self.document["checks"].get(name)

    def ok(self, name: str) -> bool:
        section = self.section(name)
        return section is not None and section["status"] == OK

    def run(self, name: str, check: Callable[[], dict], needs: tuple[str, ...] = ()) -> dict | None:
        """Runs `check` as section `name` unless it is not selected or a check it `needs` is not ok; returns
        its details when it passed. Any exception fails the section with one line: a check's crash is a result."""
        reason = None
        if name not in self.selected and name not in self.always:
            reason = f"not selected (checks={','.join(self.selected)})"
        for need in needs:
            if reason is None and not self.ok(need):
                state = self.section(need)["status"] if self.section(need) else "did not run"
                reason = f"needs the {need} check, which {'was ' if state != 'did not run' else ''}{state}"
        if reason is not None:
            return self._record(name, {"status": SKIPPED, "reason": reason, "seconds": 0.0})
        logger.info("gpu-check: %s ...", name)
        started = time.perf_counter()
        try:
            details = check()
            section = {"status": OK, "reason": None, **details}
        except Skip as skipped:
            details, section = None, {"status": SKIPPED, "reason": str(skipped)}
        except Exception as error:  # every failure of a check is reported, and the others still run
            logger.debug("gpu-check: %s failed", name, exc_info=True)
            details, section = None, {"status": FAILED, "reason": one_line(error)}
        section["seconds"] = round(time.perf_counter() - started, 2)
        self._record(name, section)
        return details

    def _record(self, name: str, section: dict) -> dict | None:
        self.document["checks"][name] = section
        verdict = section["status"] + (f": {section['reason']}" if section["reason"] else "")
        logger.info("gpu-check: %s %s (%.1f s)", name, verdict, section["seconds"])
        self.write()
        return None

    def finish(self) -> dict:
        statuses = {name: section["status"] for name, section in self.document["checks"].items()}
        self.document["summary"] = {
            status: sorted(name for name, value in statuses.items() if value == status)
            for status in (OK, FAILED, SKIPPED)
        }
        self.document["seconds"] = round(time.perf_counter() - self.started, 1)
        self.write()
        return self.document

    def write(self) -> None:
        write_json(self.path, self.document)
