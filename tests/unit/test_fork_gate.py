"""The fork server's gate: a forked worker goes on only once its supervisor knows its pid.

A server that died between fork() and its "forked" reply would otherwise leave a worker that
nobody supervises running tests beside the replacement the supervisor starts in its place."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A real fork server in a process of its own, sent one request. With "dies", the server ends
# at the moment it would tell the supervisor the child's pid. The forked child prints "ran"
# if it ever gets past serve(); the test's pipe closes only when server and child have both
# ended, so reading it to the end waits for the child, whatever it does.
SERVER = textwrap.dedent(
    """
    import os, sys
    from conveyor.fork_server import ForkRequest, ForkServer

    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    server = ForkServer(requests_read, replies_write)
    if sys.argv[1] == "dies":
        answer = server._reply

        def die_before_forked(line):
            if line.startswith("forked"):
                os._exit(0)
            answer(line)

        server._reply = die_before_forked
    os.write(requests_write, ForkRequest("gw0", 0, os.devnull, {}).encode())
    os.close(requests_write)  # the request is the last: the server ends after it
    server.serve(None)
    print("ran", os.getpid(), flush=True)
    os._exit(0)
    """
)


def _serve_one(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SERVER, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_child_goes_on_once_its_pid_is_told() -> None:
    assert _serve_one("replies").startswith("ran ")


def test_a_child_whose_server_died_before_telling_its_pid_never_runs() -> None:
    assert _serve_one("dies") == ""
