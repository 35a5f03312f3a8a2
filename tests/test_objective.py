"""The Objective: every min/max decision of a run or a search, in one place."""

import math

import pytest

from tune_hand.objective import DIVERGED_VALUE, Objective


@pytest.mark.parametrize("mode, a, b, expected", [
    ("min", 1.0, 2.0, True), ("min", 2.0, 1.0, False), ("min", 1.0, 1.0, False),
    ("max", 2.0, 1.0, True), ("max", 1.0, 2.0, False),
    ("min", 5.0, None, True), ("min", None, 5.0, False), ("min", math.nan, 5.0, False),
    ("min", 5.0, math.nan, True), ("max", math.inf, 5.0, False), ("min", True, 5.0, False),
])
def test_better(mode, a, b, expected):
    assert Objective.single("m", mode).better(a, b) is expected


@pytest.mark.parametrize("mode", ["min", "max"])
def test_worst_and_sentinel_lose_to_every_real_value(mode):
    obj = Objective.single("m", mode)
    assert obj.better(123.0, obj.worst())
    assert obj.better(1e5, obj.sentinel) and math.isfinite(obj.sentinel)
    assert abs(obj.sentinel) == DIVERGED_VALUE


@pytest.mark.parametrize("mode, best", [("min", 1), ("max", 3)])
def test_best_row_skips_diverged_and_non_finite_rows(mode, best):
    rows = [{"m": 2.0, "epoch": 0}, {"m": 1.0, "epoch": 1}, {"m": 3.0, "epoch": 3},
            {"m": 0.5 if mode == "min" else 9.0, "diverged": True, "epoch": 4}, {"m": None, "epoch": 5}]
    assert Objective.single("m", mode).best_row(rows)["epoch"] == best


def test_best_of_keeps_the_first_of_equals_and_none_without_values():
    obj = Objective.single("m", "min")
    assert obj.best_of([("a", 1.0), ("b", 1.0)], lambda t: t[1])[0] == "a"
    assert obj.best_of([("a", None)], lambda t: t[1]) is None


@pytest.mark.parametrize("mode", ["min", "max"])
def test_sort_key_orders_best_first_and_unscored_last(mode):
    obj = Objective.single("m", mode)
    values = [3.0, None, 1.0, 2.0]
    ordered = sorted(values, key=obj.sort_key)
    assert ordered == ([1.0, 2.0, 3.0, None] if mode == "min" else [3.0, 2.0, 1.0, None])


def test_worst_of_and_direction():
    assert Objective.single("m", "min").worst_of([1.0, 4.0, math.nan]) == 4.0
    assert Objective.single("m", "max").worst_of([1.0, 4.0]) == 1.0
    assert Objective.single("m", "max").worst_of([]) is None
    assert Objective.single("m", "max").direction == "maximize"


def test_dominance_over_several_objectives():
    obj = Objective(("pa_mpjpe_mm", "auc"), ("min", "max"))
    assert obj.dominates((10.0, 0.8), (11.0, 0.8))
    assert obj.dominates((10.0, 0.9), (11.0, 0.8))
    assert not obj.dominates((10.0, 0.8), (10.0, 0.8))  # equal points do not dominate
    assert not obj.dominates((9.0, 0.7), (10.0, 0.8))  # a trade-off
    with pytest.raises(ValueError):
        obj.dominates((1.0,), (2.0, 3.0))


@pytest.mark.parametrize("metrics, modes", [((), ()), (("a",), ("min", "max")), (("a",), ("up",))])
def test_malformed_objectives_are_refused(metrics, modes):
    with pytest.raises(ValueError):
        Objective(metrics, modes)
