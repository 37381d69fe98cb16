"""`kiln doctor`'s numpy sorting check, against good and broken sorts."""

from __future__ import annotations

import numpy as np

from profiler.preflight import check_numpy_sort, sort_problem


def test_numpy_sorts_correctly_here() -> None:
    assert sort_problem(np.argsort) is None
    assert check_numpy_sort().ok


def test_a_sort_that_repeats_indexes_is_caught() -> None:
    def repeats(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        order[1] = order[0]
        return order

    assert sort_problem(repeats) == "argsort did not return a permutation"


def test_a_sort_that_misorders_is_caught() -> None:
    def misorders(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        # Swap the smallest and the largest: still a permutation, no longer sorted.
        order[[0, -1]] = order[[-1, 0]]
        return order

    assert sort_problem(misorders) == "argsort did not sort"
