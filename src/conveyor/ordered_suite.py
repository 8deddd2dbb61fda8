"""Suites whose tests declare that they must run in a given order, or after other tests.

pytest-order (`@pytest.mark.order`), pytest-ordering (`@pytest.mark.run(order=...)`) and
pytest-dependency (`@pytest.mark.dependency(depends=[...])`) work inside one pytest process:
the first sorts the session's tests, the others remember, in that process, which tests ran and
passed. Shared between workers, or served slowest first, such a suite gets another verdict than
plain pytest's: a dependent test is skipped because the test it depends on passed on another
worker (a test that would have failed is then never run: a false green), and a test that relies
on the state an earlier-ordered test left finds nothing. pytest-xdist gives such wrong verdicts
silently.

A conveyor build of such a suite is therefore served in pytest's own order and kept whole
(`scheduling.whole_key`, "all"): one worker runs every test, as plain pytest would, and the
others have nothing to take. The verdict is plain pytest's; the build is not faster than one
worker. The header says so, and how to get the rest of the suite distributed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The marker, the plugin that acts on it (its name for `-p no:NAME`) and its project.
ORDER_MARKERS = (
    ("order", "pytest_order", "pytest-order"),
    ("run", "pytest_ordering", "pytest-ordering"),
    ("dependency", "dependency", "pytest-dependency"),
)
SHOWN = 3


def _declares_order(item: Any, marker: str) -> bool:
    mark = item.get_closest_marker(marker)
    if mark is None:
        return False
    if marker == "dependency":  # a name others may depend on orders nothing by itself
        return bool(mark.kwargs.get("depends"))
    return True


def order_dependence(items: Sequence[Any], config: Any) -> str | None:
    """Why this collection must run in order on one worker (which plugin's markers, on how
    many tests, the first few named), or None when nothing in it declares an order. A marker
    counts only while the plugin that acts on it is active (`-p no:NAME` turns it off)."""
    for marker, plugin, project in ORDER_MARKERS:
        if not config.pluginmanager.has_plugin(plugin):
            continue
        marked = [item.nodeid for item in items if _declares_order(item, marker)]
        if marked:
            names = ", ".join(marked[:SHOWN]) + (" ..." if len(marked) > SHOWN else "")
            return (
                f"{len(marked)} test(s) carry {project}'s `{marker}` marker ({names}); "
                f"deselect them (-m 'not {marker}') or leave {project} out (-p no:{plugin}) to "
                "share the rest between workers"
            )
    return None


def serial_notice(reason: str) -> str:
    """The line the controller prints for a build kept on one worker."""
    return (
        "conveyor: one worker runs this build, in pytest's order, since tests that declare an "
        f"order or dependencies see the tests before them only within one process: {reason}."
    )
