"""Ending a conveyor process without the interpreter's last, slow garbage collections.

At exit CPython clears every module and collects garbage several times, and each collection
walks every object still alive. A process that collected a suite holds an object graph per
test: its exit took 0.25 s at 2,000 trivial tests on the development machine, and grows with
the suite. A build pays that in each worker before the controller sees it leave, then in the
controller after the summary: twice, one after the other, where plain pytest pays it once.

`gc.freeze()` moves every live object to the permanent generation, which collections skip.
One collection first finalizes what is already garbage (the `__del__` of objects in reference
cycles runs, as it would have at exit). After that, exit runs as before: atexit handlers run
(coverage saves its data, logging flushes its handlers), and clearing the modules frees by
reference counting what they held. Only the finalizer of an object that is still reachable
and in a cycle when the process ends is skipped, which Python does not promise to run at exit
anyway.

pytest itself collects garbage as its session ends (pytest 8.4 and later: once as it
unconfigures, once more in its last cleanup), to report the exceptions that finalizers raise.
Each of those full collections walks every object too: 50-140 ms each in a worker at 2,000
trivial tests, on the path from a build's last result to its report. In a process that ends
with its session (`end_with_the_session`), `SettleGarbageAtEnd` does that first collection
itself as pytest unconfigures, while pytest's hook for those exceptions and the warning filters
are still in place, so what it finds is reported exactly as before, and then freezes what is
left: pytest's own collections after it walk only what was made since.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

from conveyor import interrupts

_ends_with_its_session = False


def end_with_the_session() -> None:
    """Said by an entry point whose process ends through `exit_process` once its one pytest
    session has (a worker, the `conveyor` command): never by code that a longer-lived process
    calls, whose frozen objects would never be collected."""
    global _ends_with_its_session
    _ends_with_its_session = True


class SettleGarbageAtEnd:
    """A pytest plugin: as the session unconfigures, in a process that ends with it, finalize
    what is garbage and freeze what is alive (the module docstring says why).

    Registered with the session (`pytest.main(plugins=...)`), after pytest's own plugins, so
    its hook runs after the project's plugins and conftests have unconfigured and before
    pytest's unraisable-exception plugin collects."""

    def pytest_unconfigure(self) -> None:
        if _ends_with_its_session:
            gc.collect()
            gc.freeze()


def exit_process(code: int) -> NoReturn:
    """`sys.exit(code)`, for a process's entry point once its work is done (never in a
    process that goes on: frozen objects are never collected). Its code is decided: an
    interrupt now (a second Ctrl-C just after the report) does not turn it into a
    traceback and 130 (`conveyor.interrupts.hold`)."""
    interrupts.hold()
    gc.collect()
    gc.freeze()
    sys.exit(code)
