"""Queue backends behind one protocol; `open_queue` picks one from a URL."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from conveyor.errors import QueueURLError
from conveyor.queue.protocol import LEASE_TTL_S, Queue
from conveyor.trace import traced_queue

__all__ = ["QUEUE_ENV", "Queue", "check_url", "mask_url", "open_queue", "queue_from_env", "scrub"]

SUPPORTED = (
    "sqlite:///path/to/queue.db, redis://[user:password@]host:port/db, rediss://…, "
    "unix:///path/redis.sock, or redis+cluster://host:port (rediss+cluster://…) for a Redis Cluster"
)
# The queue URL may come from this environment variable instead of --queue, so that a password
# in it is not in any process's argv (which every user of the machine can read).
QUEUE_ENV = "CONVEYOR_QUEUE"
# Query parameters that carry a secret (redis-py reads `password` from the query string).
SECRET_PARAMETERS = frozenset({"password"})
MASK = "***"


def queue_from_env() -> str | None:
    """The queue URL from CONVEYOR_QUEUE, if set and not empty."""
    return os.environ.get(QUEUE_ENV) or None


def _mask_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        if eq and unquote(name).strip().lower() in SECRET_PARAMETERS:
            item = f"{name}={MASK}"
        parts.append(item)
    return "&".join(parts)


def mask_url(url: str) -> str:
    """The URL with every password replaced by ***, safe to print and log: the one in the user
    information (`redis://user:password@host`) and any in the query string (`?password=…`).
    Works on the text alone, so even a URL that no parser accepts is masked, never raised on."""
    base, question, query = url.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        query = _mask_query(query) + hash_ + fragment
    scheme, slashes, rest = base.partition("://")
    if slashes:
        authority, slash, path = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            if colon:
                authority = f"{user}:{MASK}@{host}"
        base = f"{scheme}://{authority}{slash}{path}"
    return base + question + query


def scrub(text: str, url: str) -> str:
    """`text` (e.g. a library's error message about `url`) without the URL's passwords."""
    masked = mask_url(url)
    text = text.replace(url, masked)
    secrets = []
    _, _, query = url.partition("?")
    for item in query.split("#", 1)[0].split("&"):
        name, eq, value = item.partition("=")
        if eq and value and unquote(name).strip().lower() in SECRET_PARAMETERS:
            secrets.append(value)
    _, slashes, rest = url.partition("?")[0].partition("://")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    if slashes and at and ":" in userinfo:
        secrets.append(userinfo.partition(":")[2])
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        for form in {secret, unquote(secret)}:
            text = text.replace(form, MASK)
    return text


KNOWN_SCHEMES = ("sqlite", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def check_url(url: str) -> None:
    """Fail fast on a URL no backend understands, before anything else is decided."""
    scheme = _scheme(url)
    if scheme not in KNOWN_SCHEMES:
        raise QueueURLError(
            f"the queue URL {mask_url(url)!r} has an unknown scheme {scheme or '(none)'!r}; "
            f"conveyor understands {SUPPORTED}"
        )
    if scheme == "sqlite":
        sqlite_path(url)
    elif scheme != "unix":
        try:
            urlsplit(url).port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise QueueURLError(
                f"the queue URL {mask_url(url)!r} is not a valid Redis URL ({exc}); write it "
                "as redis://[user:password@]host:port/db, e.g. redis://127.0.0.1:6379/0"
            ) from None


def sqlite_path(url: str) -> str:
    """The file of a sqlite:///absolute/path URL (the scheme in any case); anything else is
    a usage error that names the form to write."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("//") or rest in ("//", "///"):
        raise QueueURLError(
            f"the queue URL {mask_url(url)!r} has no file path; write it as "
            "sqlite:///absolute/path/queue.db"
        )
    path = rest[2:]
    if not path.startswith("/"):
        # sqlite://relative.db: the text after // is a host name to a URL parser, and a path
        # relative to whichever directory each process happens to run in to a human.
        raise QueueURLError(
            f"the queue URL {mask_url(url)!r} names no absolute path ({path!r} reads as a "
            "host name); a SQLite queue is a file on this machine: write it as "
            f"sqlite:///absolute/path/queue.db, here sqlite://{Path.cwd() / path}"
        )
    return "/" + path.lstrip("/")  # sqlite:////abs/path is as good as sqlite:///abs/path


def open_queue(
    url: str,
    build: str,
    *,
    lease_ttl_s: float = LEASE_TTL_S,
    clock: Callable[[], float] = time.time,
    build_ttl_s: float | None = None,
) -> Queue:
    """Connect to the build `build` in the queue at `url`; fails fast with a message naming
    the (masked) URL and what to check. `build_ttl_s`: how long a server-side build outlives
    its last write (the embedded SQLite queue keeps its file until it is deleted)."""
    check_url(url)
    scheme = _scheme(url)
    url = scheme + url[len(scheme) :]  # schemes are case-insensitive; redis-py's parser is not
    if scheme == "sqlite":
        from conveyor.queue.sqlite import SQLiteQueue

        return traced_queue(
            SQLiteQueue(sqlite_path(url), build, lease_ttl_s=lease_ttl_s, clock=clock)
        )
    from conveyor.queue.redis import RedisQueue

    if build_ttl_s is None:
        return traced_queue(RedisQueue.from_url(url, build, lease_ttl_s=lease_ttl_s, clock=clock))
    return traced_queue(
        RedisQueue.from_url(url, build, lease_ttl_s=lease_ttl_s, clock=clock, ttl_s=build_ttl_s)
    )
