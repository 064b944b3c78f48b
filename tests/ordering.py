"""Longest test modules first, so that pytest-xdist's `--dist loadfile` does not leave one for the end.

`make test` hands each worker one module at a time in collection order (`--no-loadscope-reorder`;
xdist's own default order is by test count, which put the 6-test stack module, the longest, last).
A module that starts last runs alone while the other workers idle, so the longest go out first.
"""

from __future__ import annotations

import pytest

# From the suite's --durations on 2 cores and single-module runs, longest first; every other module
# follows in file order.
LONGEST_FIRST = (
    "test_stack_e2e.py",
    "test_shutdown.py",
    "test_benchmarks.py",
    "test_generate.py",
    "test_cli_run.py",
    "test_pipeline_s3.py",
    "test_pipeline.py",
    "test_acceleration.py",
)


def module_rank(item: pytest.Item) -> int:
    """An item's place by its module: its index in LONGEST_FIRST, or after all of them."""
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the longest modules first; sorting is stable, so the order within each module is kept."""
    items.sort(key=module_rank)
