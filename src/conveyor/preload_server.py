"""Import pytest once and fork the workers from that process before they configure.

A spawned worker spends about 0.2 s of CPU importing pytest before it does anything of its
own, N times over on the cores that have tests to run. By default (Linux, two workers or more)
the supervisor starts one process that imports pytest's and conveyor's own modules, nothing of
the project or of its plugins, and forks every worker from it (conveyor.fork_server carries the
requests). A forked worker then starts as a spawned one does, from `worker.main` on: its own
environment, settings and output, then pytest's configuration, the plugins, the conftests and
the collection. What a plugin or a conftest does when imported therefore still happens in each
worker, with that worker's environment, exactly as when spawned. `--spawn-workers` turns this
off.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading

from conveyor.fork_server import ForkServer

PRELOAD_ENV = "CONVEYOR_PRELOAD"  # beside the fork channel: fork before pytest configures
THREADED = "conveyor: a thread was running after pytest's import; the workers are spawned instead"


def preload_requested() -> bool:
    """This process was started as the preloaded fork server (the variable is consumed)."""
    return os.environ.pop(PRELOAD_ENV, None) == "1"


def preload_pytest() -> None:
    """Import the modules every pytest session imports anyway: pytest's built-in plugins.
    They read nothing of the project or the environment when imported. A module that fails
    to import here is left for the worker, which reports it as pytest would."""
    from _pytest.config import default_plugins

    for name in default_plugins:
        with contextlib.suppress(Exception):
            importlib.import_module(f"_pytest.{name}")


def serve_preloaded(channel: tuple[int, int], supervisor_pid: int) -> int:
    """Serve fork requests until the supervisor stops. Returns only in a forked worker, made
    into the worker its request names (a session of its own, its environment, its log as
    descriptors 1 and 2, as a spawned worker has them), with the server's pid: its parent."""
    preload_pytest()
    if threading.active_count() > 1:
        # Something imported started a thread; a forked worker could inherit a lock it holds.
        # This server ends without forking, and the supervisor spawns the workers instead.
        print(THREADED, file=sys.stderr, flush=True)
        os._exit(0)
    server = ForkServer(*channel)
    request = server.serve(supervisor_pid)
    os.setsid()
    os.environ.update(request.env)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    log = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return server.pid
