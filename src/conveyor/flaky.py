"""Which tests are flaky, from what earlier builds saw (`conveyor flaky`, --quarantine-auto).

A flaky event is a test that failed and then passed on a retry in one build, or a test whose
outcome differs from an earlier build of the same commit (same code, another verdict). Each
event weighs 1 when it happens and half as much every HALF_LIFE_DAYS after: a test's score is
about how many times it flaked lately, and one that was fixed fades out by itself.

Auto-quarantine (--quarantine-auto SCORE) takes the tests whose score reaches SCORE. While
quarantined, each build it passes cleanly adds a "clean" event; after N clean builds in a row it
leaves quarantine (a "released" event), and only events after that count towards its score.
Everything here is pure: events in, events and summaries out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HALF_LIFE_DAYS = 7.0
DEFAULT_RELEASE_AFTER = 10

KIND_RETRY = "retry"  # failed, then passed on a retry in the same build
KIND_FLIP = "flip"  # another outcome than an earlier build of the same commit
KIND_CLEAN = "clean"  # auto-quarantined, and passed without a retry
KIND_DIRTY = "dirty"  # auto-quarantined, and failed (or needed a retry)
KIND_RELEASED = "released"  # left auto-quarantine after enough clean builds in a row
FLAKY_KINDS = (KIND_RETRY, KIND_FLIP)

PASSED, FAILED = "passed", "failed"
FAILING = frozenset({"failed", "error"})

JSON = dict[str, Any]


@dataclass(frozen=True)
class TestOutcome:
    """What one build says about one test: its final outcome (passed, failed, error, skipped,
    ...), how many failed attempts went back for a retry, and the first line of the first
    failure seen (a retried attempt's, else the final one's)."""

    __test__ = False  # not a pytest test class, whatever its name says

    outcome: str
    reruns: int = 0
    message: str = ""

    @property
    def verdict(self) -> str | None:
        """PASSED or FAILED, or None for outcomes that say neither (skipped, xfailed)."""
        if self.outcome in FAILING:
            return FAILED
        return PASSED if self.outcome == PASSED else None


def commit_record(
    outcomes: Mapping[str, TestOutcome], *, build: str, digest: str, ts: float
) -> JSON:
    """A build of a commit as stored: its collection digest and every outcome but "passed"
    (under the same digest an absent test passed), with the failures' first lines."""
    others = {test: o.outcome for test, o in outcomes.items() if o.outcome != PASSED}
    messages = {test: o.message for test, o in outcomes.items() if o.verdict == FAILED}
    return {"build": build, "digest": digest, "ts": ts, "outcomes": others, "messages": messages}


def _earlier_verdict(record: Mapping[str, Any], test: str, digest: str) -> str | None:
    recorded = record.get("outcomes")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    if test in recorded:
        return TestOutcome(str(recorded[test])).verdict
    return PASSED if record.get("digest") == digest else None  # unknown when others ran


def events_of_build(
    outcomes: Mapping[str, TestOutcome],
    earlier: Sequence[Mapping[str, Any]],
    *,
    build: str,
    digest: str,
    ts: float,
) -> list[JSON]:
    """This build's flaky events: one per test at most, a retry before a flip."""
    events = []
    for test, outcome in outcomes.items():
        if outcome.reruns and outcome.verdict == PASSED:
            events.append(_event(test, KIND_RETRY, build, ts, outcome.message))
            continue
        now = outcome.verdict
        if now is None:
            continue
        for record in earlier:
            if record.get("build") == build:
                continue
            before = _earlier_verdict(record, test, digest)
            if before is not None and before != now:
                messages = record.get("messages")
                message = outcome.message
                if now == PASSED and isinstance(messages, Mapping):
                    message = str(messages.get(test, ""))
                events.append(_event(test, KIND_FLIP, build, ts, message))
                break
    return events


def _event(test: str, kind: str, build: str, ts: float, message: str = "") -> JSON:
    return {"test": test, "kind": kind, "build": build, "ts": ts, "message": message[:200]}


@dataclass(frozen=True)
class FlakyTest:
    """One test's record: `score` decays with time; the counts are of every event kept."""

    __test__ = False

    test: str
    score: float
    retries: int
    flips: int
    last_seen: float
    last_message: str
    clean_streak: int  # clean builds in a row while auto-quarantined
    released_at: float | None

    @property
    def count(self) -> int:
        return self.retries + self.flips

    def as_json(self) -> JSON:
        return {
            "test": self.test,
            "score": round(self.score, 3),
            "count": self.count,
            "retries": self.retries,
            "flips": self.flips,
            "last_seen": self.last_seen,
            "last_failure": self.last_message,
            "released_at": self.released_at,
        }


def decay(age_s: float) -> float:
    return float(0.5 ** (max(0.0, age_s) / (HALF_LIFE_DAYS * 86400)))


def summarise(events: Iterable[Mapping[str, Any]], now: float) -> dict[str, FlakyTest]:
    """Each test's record, from every event kept (in any order), as of `now`."""
    by_test: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        test, ts = event.get("test"), event.get("ts")
        if isinstance(test, str) and isinstance(ts, (int, float)) and math.isfinite(ts):
            by_test.setdefault(test, []).append(event)
    found = {}
    for test, own in by_test.items():
        own.sort(key=lambda e: float(e["ts"]))
        flaky = [e for e in own if e.get("kind") in FLAKY_KINDS]
        if not flaky:
            continue
        released = [float(e["ts"]) for e in own if e.get("kind") == KIND_RELEASED]
        since = released[-1] if released else None
        score = sum(
            decay(now - float(e["ts"])) for e in flaky if since is None or float(e["ts"]) > since
        )
        streak = 0
        for event in reversed(own):
            if event.get("kind") != KIND_CLEAN:
                break
            streak += 1
        messages = [str(e.get("message") or "") for e in flaky if e.get("message")]
        found[test] = FlakyTest(
            test=test,
            score=score,
            retries=sum(1 for e in flaky if e.get("kind") == KIND_RETRY),
            flips=sum(1 for e in flaky if e.get("kind") == KIND_FLIP),
            last_seen=float(flaky[-1]["ts"]),
            last_message=messages[-1] if messages else "",
            clean_streak=streak,
            released_at=since,
        )
    return found


def flakiest(summary: Mapping[str, FlakyTest], limit: int | None = None) -> list[FlakyTest]:
    ranked = sorted(summary.values(), key=lambda t: (-t.score, -t.count, t.test))
    return ranked if limit is None else ranked[:limit]


def auto_quarantined(summary: Mapping[str, FlakyTest], threshold: float) -> dict[str, float]:
    """test -> score, for the tests whose score reaches `threshold`."""
    return {test: t.score for test, t in summary.items() if t.score >= threshold}


def quarantine_events(
    quarantined: Mapping[str, float],
    outcomes: Mapping[str, TestOutcome],
    summary: Mapping[str, FlakyTest],
    *,
    release_after: int,
    build: str,
    ts: float,
) -> tuple[list[JSON], list[str]]:
    """The auto-quarantined tests' events of this build, and the tests that leave quarantine:
    a clean pass extends a test's streak; `release_after` in a row release it."""
    events, released = [], []
    for test in sorted(quarantined):
        outcome = outcomes.get(test)
        if outcome is None or outcome.verdict is None:
            continue  # not run, or skipped: says nothing either way
        if outcome.verdict == PASSED and not outcome.reruns:
            events.append(_event(test, KIND_CLEAN, build, ts))
            record = summary.get(test)
            streak = (record.clean_streak if record else 0) + 1
            if streak >= release_after:
                events.append(_event(test, KIND_RELEASED, build, ts + 1e-6))
                released.append(test)
        else:
            events.append(_event(test, KIND_DIRTY, build, ts, outcome.message))
    return events, released
