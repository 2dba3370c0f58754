"""Run brainmap's benchmarks and print every figure beside its target.

    python -m benchmarks            # all of them
    python -m benchmarks atlas      # only some (module names without the bench_ prefix)

Exit status 0 whatever the figures (they are measurements, not tests); each line says ok or MISSED.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    available = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    chosen = argv or available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    missed = 0
    for name in chosen:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"== {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
        started = time.perf_counter()
        for figure in module.run():
            print(figure.line(), flush=True)
            missed += figure.met is False
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"{missed} figure(s) missed their target" if missed else "every figure met its target")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
