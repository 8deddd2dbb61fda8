"""A Markdown summary of the build for GitHub Actions' job page ($GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OUTCOMES = ("failed", "error", "passed", "skipped", "xfailed", "xpassed", "rerun")


def source_link(path: str, line: int | None, env: Mapping[str, str]) -> str | None:
    """A link to the file and line at the build's commit, when the run knows its repository."""
    server, repository, sha = (
        env.get("GITHUB_SERVER_URL", "https://github.com"),
        env.get("GITHUB_REPOSITORY"),
        env.get("GITHUB_SHA"),
    )
    if not repository or not sha:
        return None
    anchor = f"#L{line + 1}" if line is not None else ""
    return f"{server}/{repository}/blob/{sha}/{path}{anchor}"


def _first_line(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    return (text.strip().splitlines() or [""])[0][:200].replace("|", "\\|")


def render(
    stats: Mapping[str, Sequence[Any]],
    *,
    title: str,
    flaky: Sequence[str],
    durations: Mapping[str, float],
    figures: Sequence[tuple[str, str]],
    env: Mapping[str, str],
) -> str:
    counts = [(name, len(stats.get(name, ()))) for name in OUTCOMES]
    lines = [f"## {title}", "", "| outcome | tests |", "|---|---:|"]
    lines += [f"| {name} | {count} |" for name, count in counts if count]
    problems = [
        r for r in (*stats.get("failed", ()), *stats.get("error", ())) if hasattr(r, "nodeid")
    ]
    if problems:
        lines += ["", "### Failures", ""]
        for report in problems[:100]:
            path, line = report.location[0], report.location[1]
            link = source_link(path, line, env)
            name = f"[`{report.nodeid}`]({link})" if link else f"`{report.nodeid}`"
            lines.append(f"- {name}: {_first_line(report)}")
    if flaky:
        lines += ["", "### Flaky (passed on a retry)", ""] + [f"- `{nodeid}`" for nodeid in flaky]
    if durations:
        slowest = sorted(durations.items(), key=lambda item: -item[1])[:10]
        lines += ["", "### Slowest tests", "", "| test | seconds |", "|---|---:|"]
        lines += [f"| `{nodeid}` | {seconds:.2f} |" for nodeid, seconds in slowest]
    if figures:
        lines += ["", "### Timeline", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in figures]
    return "\n".join(lines) + "\n\n"


def append_step_summary(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when it is set (it is, inside GitHub Actions)."""
    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
    return path
