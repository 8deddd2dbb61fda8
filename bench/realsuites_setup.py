"""Downloads, unpacks and installs each pinned project into its own venv, all cached outside
the repository, so that a second run starts testing at once."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.realsuites_pins import Pin

REPO = Path(__file__).resolve().parent.parent
CACHE_ENV = "CONVEYOR_REALSUITES_CACHE"
INSTALL_TIMEOUT_S = 1200.0


@dataclass(frozen=True)
class Prepared:
    """A project ready to run: its unpacked sdist and the venv's python."""

    pin: Pin
    source: Path
    python: Path

    @property
    def bindir(self) -> Path:
        return self.python.parent


def cache_root() -> Path:
    default = Path.home() / ".cache" / "conveyor-realsuites"
    return Path(os.environ.get(CACHE_ENV, default))


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    """Run an install step; on failure show its output, which names the missing piece."""
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def _find_sdist(folder: Path, pin: Pin) -> Path | None:
    """pip names sdists inconsistently (more_itertools, python_dateutil): compare normalized."""
    prefix = _normalized(pin.key) + "_"
    found = [path for path in sorted(folder.iterdir()) if _normalized(path.name).startswith(prefix)]
    return found[0] if found else None


def download(pin: Pin, root: Path) -> Path:
    """The pinned sdist, downloaded once; only the package index is contacted."""
    folder = root / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    found = _find_sdist(folder, pin)
    if found is not None:
        return found
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    _run([*argv, f"{pin.name}=={pin.version}", "-d", str(folder)], f"download {pin.key}")
    found = _find_sdist(folder, pin)
    if found is None:
        raise RuntimeError(f"pip downloaded no sdist for {pin.key} into {folder}")
    return found


def unpack(pin: Pin, sdist: Path, root: Path) -> Path:
    """The sdist's top folder, unpacked once into its own directory."""
    target = root / "src" / pin.key
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.unpack_archive(sdist, partial)
        partial.rename(target)
    tops = [path for path in target.iterdir() if path.is_dir()]
    if len(tops) != 1:
        raise RuntimeError(f"{sdist.name} does not unpack to one folder: {tops}")
    return tops[0]


def tool_versions() -> dict[str, str]:
    """pytest and pytest-xdist as installed beside conveyor, so every venv runs the same ones."""
    return {name: metadata.version(name) for name in ("pytest", "pytest-xdist")}


def _install_key(pin: Pin) -> str:
    facts = [pin.key, *pin.deps, sys.version, repr(sorted(tool_versions().items()))]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:12]


def _requirements(pin: Pin, source: Path) -> list[str]:
    pinned = [f"{name}=={version}" for name, version in tool_versions().items()]
    return [*pinned, *pin.deps, "-e", f"{REPO}[redis]", "-e", str(source)]


def make_venv(pin: Pin, source: Path, root: Path) -> Path:
    """A venv with the project (editable), its test deps, pytest, xdist and conveyor
    (editable from this checkout, so the code under test is always the working tree's)."""
    key = _install_key(pin)
    venv = root / "venvs" / pin.key
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text() == key:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)], f"venv for {pin.key}")
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run([*pip, *_requirements(pin, source)], f"install {pin.key}", cwd=source)
    stamp.write_text(key)
    return python


def prepare(pin: Pin, root: Path | None = None) -> Prepared:
    """Everything one project needs before its first run."""
    root = root or cache_root()
    source = unpack(pin, download(pin, root), root)
    return Prepared(pin, source, make_venv(pin, source, root))
