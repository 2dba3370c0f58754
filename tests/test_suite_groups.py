"""The suite's own set-up: two test processes that take whole groups of tests (pyproject's addopts)."""

from __future__ import annotations

import pytest


def test_each_test_runs_in_its_group(request: pytest.FixtureRequest) -> None:
    """pytest-xdist's ``--dist loadgroup`` sees the groups tests/conftest.py gives: a worker names each test with
    its group. (On pytest 9.2 the grouping silently stopped, pytest-xdist issue #1386, and costly session set-ups
    were made in both processes.)"""
    if not hasattr(request.config, "workerinput"):
        pytest.skip("the suite runs in one process here (-n 0 or -p no:xdist): nothing is grouped")
    assert request.node.nodeid.endswith("@test_suite_groups.py"), request.node.nodeid
