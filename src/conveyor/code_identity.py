"""What code a worker runs, so that workers of one build (on any machine) run the same code.

Comparing collected test ids is not enough: a stale CI cache or a job of an older commit joining
a reused build id collects the same ids from other code. The identity is the git commit and a
digest of the local changes to tracked files when the tests live in a git checkout, and in any
case a digest of the collected test modules and the conftest files beside them.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

GIT_TIMEOUT_S = 10.0


def _git(root: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _files_digest(paths: Iterable[Path], root: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(set(paths)):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        try:
            name = str(path.relative_to(root))
        except ValueError:
            name = path.name
        hasher.update(name.encode("utf-8", "surrogateescape") + b"\0")
        hasher.update(hashlib.sha256(data).digest())
    return hasher.hexdigest()


def test_files(module_paths: Iterable[Path]) -> list[Path]:
    """The collected modules, and every conftest.py from each module's directory upwards
    (pytest loads those for them)."""
    found: set[Path] = set()
    for module in module_paths:
        found.add(module)
        for directory in module.parents:
            conftest = directory / "conftest.py"
            if conftest.is_file():
                found.add(conftest)
            if (directory / ".git").exists():
                break
    return sorted(found)


def identify(root: Path, module_paths: Iterable[Path]) -> dict[str, str]:
    """{"tests": digest, and "commit", "changes" inside a git checkout}."""
    identity = {"tests": _files_digest(test_files(module_paths), root)}
    commit = _git(root, "rev-parse", "HEAD")
    if commit is not None:
        identity["commit"] = commit.decode().strip()
        changes = _git(root, "diff", "HEAD", "--binary")
        identity["changes"] = hashlib.sha256(changes or b"").hexdigest()
    return identity


def describe_difference(mine: Mapping[str, str], theirs: Mapping[str, str]) -> str | None:
    """None when both name the same code, else what differs, for a refusal message."""
    differences = []
    if mine.get("commit") != theirs.get("commit"):
        differences.append(
            f"git commit {mine.get('commit', 'none')[:12]} here, "
            f"{theirs.get('commit', 'none')[:12]} in the build"
        )
    elif mine.get("changes") != theirs.get("changes"):
        differences.append("the same commit with other uncommitted changes")
    if mine.get("tests") != theirs.get("tests"):
        differences.append("test modules or conftest files with other contents")
    return "; ".join(differences) or None
