"""The Redis queue's keys and Lua scripts (redis_scripts/*.lua, each read once per process and
registered once per client), and how their replies read back as the queue's plain data."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from conveyor.queue.messages import NO_KIND, NOT_JSON, malformed
from conveyor.queue.protocol import Event

# Order matters: it is the KEYS[1..16] layout every write script expects (see _lib.lua).
BUILD_KEYS = (
    "meta",
    "units",
    "attempts",
    "crashes",
    "pending",
    "leases",
    "owner",
    "workers",
    "worker_info",
    "last_seen",
    "seq",
    "events",
    "claimed",
    "lease_seq",
    "forward_ranks",
    "forward_marks",
)
WRITE_SCRIPTS = (
    "populate",
    "join",
    "reserve",
    "steal",
    "heartbeat",
    "claim",
    "complete",
    "requeue",
    "release",
    "hand_back",
    "stop",
    "resume",
    "publish",
)
READ_SCRIPTS = ("status", "events", "reservations")
LIB_SCRIPT = "_lib"


@functools.cache
def script_source(name: str) -> str:
    """Read a script once per process; write scripts get the shared prelude in front."""
    folder = resources.files("conveyor.queue").joinpath("redis_scripts")
    source = folder.joinpath(f"{name}.lua").read_text("utf-8")
    if name in WRITE_SCRIPTS:
        return folder.joinpath(f"{LIB_SCRIPT}.lua").read_text("utf-8") + "\n" + source
    return source


class BuildKeys:
    """Every key of one build: "conveyor:{<build>}:<name>", one hash tag, one cluster slot."""

    def __init__(self, build: str) -> None:
        self.prefix = "conveyor:{" + build + "}:"
        self.common = [self.prefix + name for name in BUILD_KEYS]

    def __call__(self, name: str) -> str:
        return self.prefix + name

    def reservations(self, worker: str) -> str:
        return self(f"reservations:{worker}")


def register(client: Any) -> dict[str, Any]:
    return {
        name: client.register_script(script_source(name))
        for name in (*WRITE_SCRIPTS, *READ_SCRIPTS)
    }


def pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    """[a, 1, b, 2] -> [(a, 1), (b, 2)]: how Redis replies with pairs."""
    return list(zip(flat[::2], flat[1::2], strict=True))


def event(entry_id: str, flat: Sequence[str]) -> Event:
    """One stream entry as an Event; an entry conveyor did not write becomes a malformed event
    so a reader reports it instead of crashing on it."""
    fields = dict(pairs(flat))
    seq = int(entry_id.split("-", 1)[0])
    worker, unit, raw = fields.get("worker"), fields.get("unit"), fields.get("data", "")
    try:
        ts = float(fields.get("ts", "0"))
    except ValueError:
        ts = 0.0
    try:
        payload = json.loads(raw)
        kind = fields["kind"]
    except (KeyError, ValueError):
        return malformed(seq, worker, unit, NOT_JSON if "kind" in fields else NO_KIND, raw, ts)
    return Event(seq, kind, worker, unit, payload, ts)
