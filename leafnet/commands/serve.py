"""Serve an exported archive on this machine: `leafnet serve start|stop|status [variant=onnx-int8]`.

start: TorchServe on loopback with the Caddy proxy in front of it on http://127.0.0.1:<port> (the profile's
TorchServe properties and Caddyfile, leafnet/profiles), returning once every worker has loaded the model;
the servers keep running in the background. stop: the proxy drains the requests in flight, then TorchServe
stops. status: the proxy's /ping (exit status 1 when nothing healthy answers). Give stop and status the
port= and log_dir= that start had. Needs leafnet[serve] and a Java 17 runtime; docs/serving.md.
"""

import sys

from leafnet.config import load_config
from leafnet.errors import LeafnetError
from leafnet.server import ServeConfig, start, status, stop

ACTIONS = ("start", "stop", "status")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ACTIONS:
        choices = ", ".join(f"serve {action}" for action in ACTIONS)
        if argv and "=" not in argv[0]:
            raise LeafnetError(f"unknown subcommand 'leafnet serve {argv[0]}': {choices}")
        raise LeafnetError(f"leafnet serve needs a subcommand: {choices}")
    action, config = argv[0], load_config(ServeConfig, argv[1:])
    if action == "start":
        start(config)
    elif action == "stop":
        stop(config)
    else:
        ok, answer = status(config)
        print(answer, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    return 0


CONFIG = ServeConfig  # the options and their defaults (`leafnet serve --help` lists them)
