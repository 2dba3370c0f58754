"""Figures measured by a benchmark, printed beside their targets."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Figure:
    """One measured figure and its target. ``better`` is "lower" (times, memory) or "higher" (throughput)."""

    name: str
    value: float
    target: float | None
    unit: str
    better: str = "lower"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        # a Python bool: numpy's comparisons give np.bool_, which `is False` misses (the summary's count)
        return bool(self.value <= self.target if self.better == "lower" else self.value >= self.target)

    def line(self) -> str:
        sign = "<=" if self.better == "lower" else ">="
        target = f"target {sign} {self.target:g} {self.unit}" if self.target is not None else "(for scale)"
        verdict = {True: "ok", False: "MISSED", None: ""}[self.met]
        note = f"  [{self.note}]" if self.note else ""
        return f"  {self.name:<58} {self.value:>10.3f} {self.unit:<6} {target:<24} {verdict}{note}"


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """(fastest, median) wall time of ``fn`` in seconds over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)
