"""Send hostile requests to a running server and check each is refused while the server keeps serving:
`leafnet hostile [url=http://127.0.0.1:8080] image=leaf.png [pid=SUPERVISOR_PID] [token=...]`.

Form bodies, very large PNGs, many-part and chunked multipart, oversized bodies and headers, a slow body,
management and unknown paths through the proxy, and (with token=) missing and wrong tokens. Each gets its
status, time, the server's peak memory (with pid=: leafnet serve writes runs/torchserve/supervisor.pid)
and whether a good image still gets a 200 afterwards. Writes report.json and report.md under out=
(runs/hostile); exits 1 if any request was not refused or the server stopped serving. Loopback only.
"""

import sys

from leafnet.bench.hostile import HostileConfig, run_hostile, write_report
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    config = load_config(HostileConfig, argv)
    report = run_hostile(config)
    out = write_report(config, report)
    print(f"{sum(o.ok for o in report.outcomes)}/{len(report.outcomes)} cases as expected; report in {out}")
    if not report.ok:
        sys.exit(1)


CONFIG = HostileConfig  # the options and their defaults (`leafnet hostile --help` lists them)
