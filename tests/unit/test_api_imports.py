"""`conveyor.api` is for workers of any framework: importing it must not need pytest."""

from __future__ import annotations

import subprocess
import sys

# Any import of pytest in the script raises ImportError.
WITHOUT_PYTEST = "import sys\nsys.modules['pytest'] = None\nsys.modules['_pytest'] = None\n"


def run_without_pytest(body: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST + body], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_api_imports_and_builds_results_without_pytest() -> None:
    run_without_pytest(
        "from conveyor.api import Result, result_payload\n"
        "payload = result_payload('features/a.feature', Result('failed', message='boom'), 1, 0.0)\n"
        "assert payload['reports'][0]['outcome'] == 'failed', payload\n"
        "assert not any(name.startswith('pytest') for name in sys.modules if sys.modules[name])\n"
    )


def test_the_command_imports_pytest_only_where_it_is_needed() -> None:
    """`conveyor worker`, `plan` and the other commands that need no pytest start without
    importing it: everything up to the spawn of workers imports without pytest."""
    run_without_pytest(
        "import conveyor.cli\n"
        "from conveyor.cli import _open, _resolve_build, _supervisor\n"
        "from conveyor.config import parse_run_options\n"
        "parse_run_options(['-n', '2', '-q'], 'run')\n"
    )


def test_the_run_command_imports_only_what_starting_the_workers_needs() -> None:
    """`conveyor run` starts its workers before the controller's own modules are imported:
    what follows the build, command mode and the history commands are imported where they
    are used, so the workers start sooner (they wait for nothing else)."""
    run_without_pytest(
        "import conveyor.cli\n"
        "from conveyor.cli import _open, _resolve_build, _supervisor\n"
        "later = ('conveyor.build_follower', 'conveyor.problems', 'conveyor.command',\n"
        "         'conveyor.history', 'conveyor.report_replay')\n"
        "assert not [name for name in later if name in sys.modules], sys.modules.keys()\n"
    )
