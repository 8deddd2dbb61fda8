"""Import pytest once and fork the workers from that process before they configure.

A spawned worker spends about 0.2 s of CPU importing pytest before it does anything of its
own, N times over on the cores that have tests to run. By default (Linux, two workers or more)
the supervisor starts one process that imports pytest and conveyor's worker code, nothing of
the project or of its plugins, and forks every worker from it (conveyor.fork_server carries the
requests). A forked worker then starts as a spawned one does, from `worker.main` on: its own
environment, settings and output, then pytest's configuration, the plugins, the conftests and
the collection. What a plugin or a conftest does when imported therefore still happens in each
worker, with that worker's environment, exactly as when spawned. `--spawn-workers` turns this
off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from conveyor.fork_server import ForkServer

PRELOAD_ENV = "CONVEYOR_PRELOAD"  # beside the fork channel: fork before pytest configures


def preload_requested() -> bool:
    """This process was started as the preloaded fork server (the variable is consumed)."""
    return os.environ.pop(PRELOAD_ENV, None) == "1"


def _running_threads() -> int:
    """Every thread of this process, those started in C included (a faulthandler watchdog, a
    numerical library's pool), which `threading` does not know about."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _start_up_hook() -> str | None:
    """A sitecustomize or usercustomize of the user's, not the system's: code that ran as this
    interpreter started and would run once for every worker instead of once in each."""
    system = (os.path.realpath(sys.base_prefix), "/etc/", "/usr/lib/")
    for name in ("usercustomize", "sitecustomize"):
        module = sys.modules.get(name)
        where = os.path.realpath(getattr(module, "__file__", None) or "")
        if module is not None and not (name == "sitecustomize" and where.startswith(system)):
            return name
    return None


def why_not_fork() -> str | None:
    """Why the workers must be spawned instead of forked from this process, if they must."""
    if (hook := _start_up_hook()) is not None:
        return f"a {hook} module ran at start-up, and must run in each worker"
    if _running_threads() > 1:
        return "a thread was running, and a forked worker could inherit a lock it holds"
    return None


def serve_preloaded(channel: tuple[int, int], supervisor_pid: int) -> int:
    """Serve fork requests until the supervisor stops. Returns only in a forked worker, made
    into the worker its request names (a session of its own, its environment, its log as
    descriptors 1 and 2, as a spawned worker has them), with the server's pid: its parent.
    What this process imported is only what a spawned worker imports before `worker.main`
    (pytest, conveyor's worker code)."""
    if (reason := why_not_fork()) is not None:
        # This server ends without forking, and the supervisor spawns the workers instead.
        print(f"conveyor: the workers are spawned: {reason}", file=sys.stderr, flush=True)
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
