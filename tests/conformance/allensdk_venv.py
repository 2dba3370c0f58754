"""The AllenSDK 2.16.2 interpreter of the conformance suite: found, or made once and cached.

``python tests/conformance/allensdk_venv.py`` prints the path of a Python 3.11 interpreter with the real,
unmodified ``allensdk==2.16.2`` installed, making its virtual environment first if there is none (``.ci/run``
calls it before the tests, so CI builds it once and caches it). Where it looks, in order:

1. ``$BRAINMAP_ALLENSDK_PYTHON``: an interpreter (used as it is, never installed into);
2. ``$BRAINMAP_ALLENSDK_VENV``: a virtual environment folder (made there if missing);
3. ``~/.cache/brainmap/allensdk-2.16.2-py3.11`` (``$XDG_CACHE_HOME`` respected), made there if missing.

Making it needs a Python 3.11 (``$BRAINMAP_PYTHON311``, ``python3.11`` on the PATH, or this interpreter if it
is 3.11) and pip's index; a lock file keeps two test sessions from building it at once. AllenSDK is imported
only by that interpreter: brainmap never depends on it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

ALLENSDK_VERSION = "2.16.2"
ENV_PYTHON = "BRAINMAP_ALLENSDK_PYTHON"
ENV_VENV = "BRAINMAP_ALLENSDK_VENV"
ENV_PYTHON311 = "BRAINMAP_PYTHON311"
INSTALL_TIMEOUT_S = 3600


class AllenSdkUnavailable(RuntimeError):
    """No AllenSDK interpreter can be had here (the reason says why)."""


def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "brainmap" / f"allensdk-{ALLENSDK_VERSION}-py3.11"


def _has_allensdk(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import allensdk; print(allensdk.__version__)"],
                           capture_output=True, text=True, timeout=300)
    return probe.returncode == 0 and probe.stdout.strip() == ALLENSDK_VERSION


def _python311() -> str:
    candidates = [os.environ.get(ENV_PYTHON311), shutil.which("python3.11")]
    if sys.version_info[:2] == (3, 11):
        candidates.append(sys.executable)
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    raise AllenSdkUnavailable("no Python 3.11 to make the AllenSDK environment with (AllenSDK 2.16.2 needs "
                              f"3.11): set {ENV_PYTHON311}, or {ENV_PYTHON} to an interpreter with allensdk")


def allensdk_python(build: bool = True) -> Path:
    """The interpreter with AllenSDK 2.16.2 (see the module docstring); makes the environment if allowed."""
    given = os.environ.get(ENV_PYTHON)
    if given:
        python = Path(given)
        if not _has_allensdk(python):
            raise AllenSdkUnavailable(f"{ENV_PYTHON}={given} has no allensdk {ALLENSDK_VERSION}")
        return python
    venv = Path(os.environ.get(ENV_VENV) or default_venv())
    python = venv / "bin" / "python"
    if _has_allensdk(python):
        return python
    if not build:
        raise AllenSdkUnavailable(f"no AllenSDK {ALLENSDK_VERSION} environment at {venv}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it: wait for it
        if _has_allensdk(python):
            return python
        if venv.exists():
            shutil.rmtree(venv)
        subprocess.run([_python311(), "-m", "venv", str(venv)], check=True, timeout=600)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"allensdk=={ALLENSDK_VERSION}"],
                       check=True, timeout=INSTALL_TIMEOUT_S)
    if not _has_allensdk(python):
        raise AllenSdkUnavailable(f"installing allensdk {ALLENSDK_VERSION} into {venv} did not give an "
                                  "importable allensdk")
    return python


if __name__ == "__main__":
    try:
        print(allensdk_python())
    except (AllenSdkUnavailable, subprocess.SubprocessError) as exc:
        print(f"allensdk_venv: {exc}", file=sys.stderr)
        sys.exit(1)
