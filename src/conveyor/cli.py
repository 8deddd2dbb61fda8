"""The `conveyor` command: parses its own few options and delegates."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from conveyor import __version__
from conveyor.config import RunOptions, hash_seed_for, new_build_id, parse_run_options
from conveyor.controller import ControllerPlugin, ControllerSettings
from conveyor.errors import ConveyorError, QueueError, UsageError
from conveyor.queue import open_queue
from conveyor.supervisor import Supervisor
from conveyor.worker import WorkerSettings

USAGE = """\
usage: conveyor run [-n N|auto] [--queue URL] [--build ID] [options] [PYTEST_ARGS...]

Runs a pytest suite on N worker processes that pull tests from a queue, and reports
the results exactly as plain pytest would (terminal output, --junitxml, exit code).

conveyor options:
  -n N|auto               worker processes (default: auto = one per available CPU;
                          0 runs pytest in this process, like pytest-xdist's -n 0)
  --queue URL             queue to use (default: an embedded SQLite file in a
                          temporary directory); sqlite:///path/queue.db
  --build ID              build id (default: a new random id)
  --lease-ttl SECONDS     how long a silent worker keeps its tests (default: 30)
  --max-worker-restarts N replacements for crashed workers (default: 2 x N)
  --max-unit-crashes N    workers a test may take down before it is reported as
                          failed (default: 2)

Every other argument goes to pytest unchanged (-k, -m, -x, -v, -p, --junitxml, paths...).
Exit codes are pytest's: 0 passed, 1 failed, 2 interrupted, 3 internal, 4 usage, 5 no tests.
"""


def _error(message: str, code: int) -> int:
    print(f"conveyor: error: {message}", file=sys.stderr)
    return code


def run(argv: Sequence[str]) -> int:
    options = parse_run_options(argv)
    if options.in_process:
        return int(pytest.main(options.pytest_args))
    run_dir = Path(tempfile.mkdtemp(prefix="conveyor-"))
    try:
        return _run_distributed(options, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_distributed(options: RunOptions, run_dir: Path) -> int:
    explicit_build = options.build is not None
    build = options.build or new_build_id()
    queue_url = options.queue or f"sqlite://{run_dir / 'queue.db'}"
    queue = open_queue(queue_url, build, lease_ttl_s=options.lease_ttl_s)
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = hash_seed_for(build, explicit_build)
    env["PYTEST_XDIST_TESTRUNUID"] = build
    worker_args = [arg for arg in options.pytest_args if arg != "--cache-clear"]
    template = WorkerSettings(
        queue_url=queue_url,
        build=build,
        worker_id="",
        worker_count=options.workers,
        lease_ttl_s=options.lease_ttl_s,
        max_unit_crashes=options.max_unit_crashes,
    )
    max_restarts = options.max_restarts if options.max_restarts is not None else 2 * options.workers
    node = "" if options.queue is None else f"{socket.gethostname()}-{os.getpid()}/"

    # Workers start before the controller's own pytest start-up, which runs meanwhile.
    supervisor = Supervisor(
        queue=open_queue(queue_url, build, lease_ttl_s=options.lease_ttl_s),
        count=options.workers,
        settings_template=template,
        pytest_args=worker_args,
        run_dir=run_dir,
        env=env,
        max_restarts=max_restarts,
        node=node,
    )
    supervisor.start()
    plural = "s" if options.workers != 1 else ""
    settings = ControllerSettings(
        queue_url=queue_url,
        build=build,
        workers=options.workers,
        header=(
            f"conveyor: {options.workers} worker{plural}, queue {queue.display_url}, "
            f"build {build}, PYTHONHASHSEED={env['PYTHONHASHSEED']}"
        ),
    )
    controller = ControllerPlugin(settings, queue, supervisor)
    try:
        return int(pytest.main(options.pytest_args, plugins=[controller]))
    finally:
        supervisor.shutdown(terminate=True)
        queue.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 4
    if args[0] in ("--version", "-V"):
        print(f"conveyor {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command != "run":
        return _error(f"unknown command {command!r}; see `conveyor --help`.", 4)
    if rest and rest[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    try:
        return run(rest)
    except UsageError as exc:
        return _error(str(exc), 4)
    except QueueError as exc:
        return _error(str(exc), 4)
    except ConveyorError as exc:
        return _error(str(exc), 3)
    except KeyboardInterrupt:
        return _error("interrupted.", 2)


if __name__ == "__main__":
    sys.exit(main())
