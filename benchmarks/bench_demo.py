"""The demo end to end: ``brainmap demo`` (the main job) in a fresh folder, then run again on the same folder.

A new process runs the console command exactly as the README says (atlas summary, six virtual specimens, the
whole pipeline on a local Dask cluster of two workers, summaries and pictures); its wall-clock time is the
figure. Beside it, for scale, the CPU seconds (user + system) of the command's whole process tree (its Dask
workers are its descendants, reaped before it exits): a machine whose speed drifts (``docs/performance-demo.md``,
rounds 9-14) moves the wall time of one commit by 20 % or more, and its CPU time with it, but two commits compared
in one phase differ by their CPU. The second run finds every stage done (the runner's records) and shows what
resuming costs. Target: issue 18's <= 45 s on two cores (148 s quiet at the start of issue 18's round 3,
2026-12-05, more than half of its CPU time in the kernel; 83.5 s quiet after it: see
``docs/performance-demo.md``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks.child import ChildRun, run_child
from benchmarks.report import Figure


def _brainmap() -> list[str]:
    """The ``brainmap`` console command installed beside this interpreter (as in the README's ``.venv``)."""
    script = Path(sys.executable).with_name("brainmap")
    if not script.exists():
        raise RuntimeError(f"no brainmap command beside {sys.executable}: install the package (pip install -e .)")
    return [str(script)]


def _timed_demo(out: Path) -> ChildRun:
    run = run_child([*_brainmap(), "demo", "--out", str(out)])
    if run.exit_code != 0:
        raise RuntimeError(f"brainmap demo --out {out} exited with {run.exit_code}")
    return run


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="brainmap-demo-bench-") as tmp:
        out = Path(tmp) / "demo"
        first = _timed_demo(out)
        again = _timed_demo(out)
        written = sorted(p.name for p in out.iterdir() if p.is_file())
    return [
        # Issue 18's target (the first release's 300 s allowance is gone).
        Figure("brainmap demo, fresh folder (wall clock)", first.wall_s, 45.0, "s",
               note=f"{len(written)} files written beside the specimens"),
        Figure("... its CPU time, all its processes (user + system)", first.cpu_s, None, "s"),
        Figure("brainmap demo again on the same folder (stages skipped)", again.wall_s, None, "s"),
    ]
