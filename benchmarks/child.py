"""Wall time, peak memory and CPU time of one command run as a child process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChildRun:
    """What one child process took: wall seconds, peak RSS (GB), CPU seconds (user + system), exit code."""

    wall_s: float
    peak_gb: float
    cpu_s: float
    exit_code: int


def _high_water_kb(pid: int) -> int:
    """``VmHWM`` of a live process (KiB), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_child(args: list[str], env: dict[str, str] | None = None, poll_s: float = 0.02) -> ChildRun:
    """Run ``args`` and measure it.

    The peak is the child's own high-water RSS (``VmHWM`` of the memory it has after ``exec``), read every
    ``poll_s`` seconds while it runs. ``ru_maxrss`` from ``wait4`` is not used: Linux carries the high-water mark
    of the memory a child had *before* ``exec`` into it, and a child forked from a benchmark process holding
    gigabytes reports the parent's size (measured: a 3 GB parent's ``sleep`` child reported 2.8 GB). Polled, it
    reads a little under ``/usr/bin/time``'s figure from a small shell: ``brainmap align`` of 134 sections 2.67
    against 2.81 GB (the kernel's RSS counters are synced lazily, and the last ``poll_s`` is not seen).

    Parameters
    ----------
    args : list of str
        The command.
    env : dict, optional
        Variables added to this process's environment.
    poll_s : float
        Seconds between reads of the child's high-water mark; growth in its last ``poll_s`` is not seen.
    """
    started = time.perf_counter()
    process = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    peak_kb = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, _high_water_kb(process.pid))
        time.sleep(poll_s)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(time.perf_counter() - started, peak_kb / 2**20, usage.ru_utime + usage.ru_stime,
                    process.returncode)
