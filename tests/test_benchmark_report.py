"""The benchmarks' report: a figure measured as a numpy number is judged, printed and counted like any other."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from benchmarks import __main__ as bench_main
from benchmarks.report import Figure


@pytest.mark.parametrize("value", [0.879, np.float64(0.879), np.float32(0.879)])
def test_a_figure_below_its_target_is_missed_whatever_its_type(value):
    figure = Figure("pixel precision", value, 0.9, "", better="higher")
    assert figure.met is False
    assert "MISSED" in figure.line()


def test_the_summary_counts_every_missed_figure(monkeypatch, capsys):
    module = types.ModuleType("benchmarks.bench_fake_report")
    module.__doc__ = "A fake benchmark."
    module.run = lambda: iter([
        Figure("numpy, missed", np.float64(0.88), 0.9, "", better="higher"),
        Figure("python, missed", 6.1, 5.0, "s"),
        Figure("numpy, met", np.float64(0.95), 0.9, "", better="higher"),
        Figure("for scale", np.float64(1.0), None, ""),
    ])
    monkeypatch.setitem(sys.modules, "benchmarks.bench_fake_report", module)
    monkeypatch.setattr(bench_main.pkgutil, "iter_modules",
                        lambda paths: [types.SimpleNamespace(name="bench_fake_report")])
    assert bench_main.main(["fake_report"]) == 0
    out = capsys.readouterr().out
    assert out.count("MISSED") == 2
    assert out.strip().endswith("2 figure(s) missed their target")
