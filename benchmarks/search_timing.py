"""Timing helpers shared by the search benchmarks (bench_search, bench_connectivity_search): best-of-n timing,
the memory-bandwidth floor (one plain streaming pass over a matrix) and the note printed beside a figure."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from brainmap.search import _kernels


def timed(fn: Callable[[], Any], repeat: int = 7) -> tuple[float, float, Any]:
    """``(fastest, median, last result)`` of ``repeat`` runs of ``fn``, wall seconds (the machine is shared: the
    fastest run is the one least disturbed)."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), result


def streaming_floor(raw: np.ndarray) -> float:
    """Seconds of the fastest of 5 plain streaming passes over every byte of ``raw`` (the bandwidth floor)."""
    return timed(lambda: _kernels.streaming_pass(raw), repeat=5)[0]


def note(median: float, floor: float | None = None, nbytes: int = 0, extra: str = "") -> str:
    """``median ...; streaming floor ... over ... GB; extra``."""
    text = f"median {median:.3f} s"
    if floor is not None:
        text += f"; streaming floor {floor:.3f} s over {nbytes / 1e9:.2f} GB"
    return text + (f"; {extra}" if extra else "")
