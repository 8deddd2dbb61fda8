"""Queue backends behind one protocol; `open_queue` picks one from a URL."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from conveyor.errors import QueueUnavailable
from conveyor.queue.protocol import Queue

__all__ = ["Queue", "check_url", "mask_url", "open_queue"]

SUPPORTED = "sqlite:///path/to/queue.db, redis://[user:password@]host:port/db, rediss://… or unix:///path/redis.sock"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


KNOWN_SCHEMES = ("sqlite", "redis", "rediss", "unix")


def check_url(url: str) -> None:
    """Fail fast on a URL no backend understands, before anything else is decided."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in KNOWN_SCHEMES:
        raise QueueUnavailable(
            f"the queue URL {mask_url(url)!r} has an unknown scheme {scheme or '(none)'!r}; "
            f"conveyor understands {SUPPORTED}"
        )


def open_queue(
    url: str,
    build: str,
    *,
    lease_ttl_s: float = 30.0,
    clock: Callable[[], float] = time.time,
    build_ttl_s: float | None = None,
) -> Queue:
    """Connect to the build `build` in the queue at `url`; fails fast with a message naming
    the (masked) URL and what to check. `build_ttl_s`: how long a server-side build outlives
    its last write (the embedded SQLite queue keeps its file until it is deleted)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from conveyor.queue.sqlite import SQLiteQueue

        path = url[len("sqlite://") :]
        if not url.startswith("sqlite://") or not path or path == "/":
            raise QueueUnavailable(
                f"the queue URL {mask_url(url)!r} has no file path; write it as "
                "sqlite:///absolute/path/queue.db"
            )
        if path.startswith("/"):
            path = "/" + path.lstrip("/")  # sqlite:////abs/path is as good as sqlite:///abs/path
        return SQLiteQueue(path, build, lease_ttl_s=lease_ttl_s, clock=clock)
    if scheme in ("redis", "rediss", "unix"):
        from conveyor.queue.redis import RedisQueue

        extra = {} if build_ttl_s is None else {"ttl_s": build_ttl_s}
        return RedisQueue.from_url(url, build, lease_ttl_s=lease_ttl_s, clock=clock, **extra)
    check_url(url)
    raise AssertionError("unreachable: check_url accepted an unknown scheme")
