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
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

from conveyor import interrupts


def exit_process(code: int) -> NoReturn:
    """`sys.exit(code)`, for a process's entry point once its work is done (never in a
    process that goes on: frozen objects are never collected). Its code is decided: an
    interrupt now (a second Ctrl-C just after the report) does not turn it into a
    traceback and 130 (`conveyor.interrupts.hold`)."""
    interrupts.hold()
    gc.collect()
    gc.freeze()
    sys.exit(code)
