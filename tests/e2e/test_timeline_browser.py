"""The timeline page in a real headless Chromium: it draws, raises no error, and shows the same
figures as `figures()`. Skips locally without Chromium, but fails in CI (which installs it)."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conveyor.queue.protocol import Event
from conveyor.timeline import Figures, figures
from conveyor.timeline_page import write_html

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1400, 900
BROWSER_TIMEOUT_S = 120
# No network, no background services: the page must draw from the file alone.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def require_chromium() -> str:
    """Skip locally, but fail in CI, when Chromium is not installed."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium")
    if found:
        return found
    message = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def synthetic_build(tests: int, workers: int, seed: int = 3) -> list[Event]:
    """A plausible build: start-up, then tests handed to whichever worker is free first, with
    failures, skips, a few reruns, one crash and one timeout."""
    rng = random.Random(seed)
    events: list[Event] = []

    def emit(kind: str, worker: str | None, unit: str | None, ts: float, **data: Any) -> None:
        events.append(Event(len(events) + 1, kind, worker, unit, data, ts))

    start = 1_700_000_000.0
    for lane in range(workers):
        emit("worker_joined", f"gw{lane}", None, start + 0.05 * lane)
    emit("populated", "gw0", None, start + 1.5, total=tests)
    free = [start + 2.0 + rng.random() * 0.2 for _ in range(workers)]
    for index in range(tests):
        lane = min(range(workers), key=free.__getitem__)
        worker, unit = f"gw{lane}", f"tests/test_m{index % 41}.py::test_case[{index}]"
        duration = 4.0 if index % 997 == 0 else rng.expovariate(10.0)
        began = free[lane]
        if index == 1000:
            cause = {"reason": f"worker {worker} crashed", "worker": worker, "timeout": False}
            emit("unit_crashed", worker, unit, began + 0.8, attempt=1, crashes=1, cause=cause)
            free[lane] = began + 0.9
            continue
        if index == 2000:
            cause = {"reason": f"worker {worker} timed out", "worker": worker, "timeout": True}
            emit("unit_crashed", worker, unit, began + 2.0, attempt=1, crashes=1, cause=cause)
            free[lane] = began + 2.1
            continue
        roll = rng.random()
        call = "failed" if roll < 0.03 else "skipped" if roll < 0.05 else "passed"
        reports = [{"when": "setup", "outcome": "passed"}, {"when": "call", "outcome": call}]
        payload = {"nodeid": unit, "started": began, "duration": duration, "attempt": 1}
        if index % 400 == 7:
            failed = [{"when": "call", "outcome": "failed"}]
            emit("requeued", worker, unit, began + duration, **payload, reports=failed)
            began += duration
            payload = {**payload, "started": began, "attempt": 2}
        emit("result", worker, unit, began + duration, **payload, reports=reports)
        free[lane] = began + duration + 0.001
    emit("finished", None, None, max(free) + 0.2, done=tests, total=tests)
    return events


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        check=False,
    )


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    """The PNG's chunks by type, IDAT chunks joined: enough to size and inflate the image."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks: dict[bytes, bytes] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks[kind] = chunks.get(kind, b"") + data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return chunks


class PageReader(HTMLParser):
    """Collects <body>'s attributes and every element's data-* attributes from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.figures: dict[str, str] = {}
        self.workers: dict[str, dict[str, str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        if found.get("data-figure"):
            self.figures[str(found["data-figure"])] = str(found.get("data-value"))
        if tag == "tr" and found.get("data-worker"):
            self.workers[str(found["data-worker"])] = {
                key: str(value) for key, value in found.items()
            }


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Figures]:
    events = synthetic_build(5_000, 16)
    path = tmp_path_factory.mktemp("timeline") / "timeline.html"
    result = write_html(path, events, title="5,000 tests on 16 workers")
    assert result == figures(events)
    return path, result


def test_the_page_draws_a_screenshot(build: tuple[Path, Figures], tmp_path: Path) -> None:
    binary = require_chromium()
    path, _ = build
    png = tmp_path / "timeline.png"
    done = run_chromium(
        binary,
        tmp_path / "profile",
        f"--screenshot={png}",
        f"--window-size={WIDTH},{HEIGHT}",
        path.as_uri(),
    )
    assert png.exists(), done.stderr[-3000:]
    chunks = png_chunks(png.read_bytes())
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert (width, height) == (WIDTH, HEIGHT)
    pixels = zlib.decompress(chunks[b"IDAT"])
    # A blank page compresses to almost nothing and has a handful of distinct bytes; the lanes
    # of 5,000 coloured bars do neither.
    assert len(chunks[b"IDAT"]) > 30_000
    assert len(set(pixels[:: max(1, len(pixels) // 50_000)])) > 32


def test_the_page_runs_without_errors_and_shows_the_figures(
    build: tuple[Path, Figures], tmp_path: Path
) -> None:
    binary = require_chromium()
    path, result = build
    done = run_chromium(binary, tmp_path / "profile", "--dump-dom", path.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Uncaught" not in done.stderr, done.stderr[-3000:]
    page = PageReader()
    page.feed(done.stdout)
    assert "data-errors" not in page.body, page.body.get("data-errors")
    assert page.body.get("data-rendered") == "yes"
    assert float(page.figures["wall_s"]) == pytest.approx(result.wall_s, abs=1e-6)
    assert float(page.figures["lower_bound_s"]) == pytest.approx(result.lower_bound_s, abs=1e-6)
    assert result.wall_ratio is not None
    assert float(page.figures["wall_ratio"]) == pytest.approx(result.wall_ratio, abs=1e-6)
    assert int(page.figures["workers"]) == 16
    assert len(page.workers) == 16
    for row in result.per_worker:
        shown = page.workers[row.worker]
        assert float(shown["data-utilisation"]) == pytest.approx(row.utilisation, abs=1e-6)
        assert float(shown["data-idle-tail"]) == pytest.approx(row.idle_tail_s, abs=1e-6)
    assert result.counts["crash"] == 1
    assert result.counts["timeout"] == 1
    assert result.counts["rerun"] == 13


def test_the_error_check_sees_a_failing_script(build: tuple[Path, Figures], tmp_path: Path) -> None:
    """The check above is only worth something if a broken page fails it."""
    binary = require_chromium()
    path, _ = build
    broken = tmp_path / "broken.html"
    script = "<script>throw new Error('timeline-boom')</script></body>"
    broken.write_text(path.read_text("utf-8").replace("</body>", script), "utf-8")
    done = run_chromium(binary, tmp_path / "profile", "--dump-dom", broken.as_uri())
    page = PageReader()
    page.feed(done.stdout)
    assert "timeline-boom" in str(page.body.get("data-errors"))
    assert "Uncaught" in done.stderr
