"""benchmarks/bench_search_efficiency.py: the tabular replay on a tiny synthetic table (seconds)."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_search_efficiency",
                                                  ROOT / "benchmarks" / "bench_search_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_table(epochs: int = 4) -> dict:
    """12 configs over the quick space: the PA loss and a mid learning rate learn, noise-free but
    for config c00, recorded with two seeds."""
    space = {"model.channels": {"type": "categorical", "values": [16, 32]},
             "optim.lr": {"type": "loguniform", "low": 5e-4, "high": 3e-3},
             "optim.pa_loss_weight": {"type": "categorical", "values": [0.0, 0.5, 1.0]}}
    configs = []
    for i, (c, pa, lr) in enumerate(itertools.product([16, 32], [0.0, 0.5, 1.0], [6e-4, 2e-3])):
        floor = 38.0 - 15.0 * pa - (1.0 if lr > 1e-3 else 0.0) - (0.5 if c == 32 else 0.0)

        def rows(shift: float, floor: float = floor, pa: float = pa, c: int = c) -> list[dict]:
            return [{"epoch": e + 1, "pa_mpjpe_mm": round(floor + 10.0 / (e + 1) + shift, 3),
                     "rr_mpjpe_mm": round(100.0 - 3 * e - 10 * pa + shift, 3), "seconds": 10.0 + c / 16}
                    for e in range(epochs)]

        seeds = {"0": {"epochs": rows(0.0), "status": "ok"}}
        if i == 0:
            seeds["1"] = {"epochs": rows(0.4), "status": "ok"}
        configs.append({"id": f"c{i:02d}", "params": {"model.channels": c, "optim.lr": lr,
                                                      "optim.pa_loss_weight": pa}, "seeds": seeds})
    return {"spec": "quick", "space": space, "configs": configs, "source": "test"}


def test_measures_on_a_hand_trace(bench):
    trace = [(1, 10.0, 30.0, 90.0), (2, 20.0, 25.0, 95.0), (3, 30.0, 25.0, 80.0), (4, 40.0, 22.0, 80.0)]
    assert bench.first_reach(trace, 25.0) == (2, 20.0)
    assert bench.first_reach(trace, 21.0) is None
    assert bench.best_at(trace, 3) == 25.0
    assert bench.best_at(trace, 3, column=3) == 80.0


def test_nearest_config_matches_categoricals_and_log_lr(bench):
    table = bench.Table(tiny_table())
    i = table.nearest({"model.channels": 32, "optim.lr": 1.5e-3, "optim.pa_loss_weight": 0.5})
    assert table.configs[i]["params"] == {"model.channels": 32, "optim.lr": 2e-3, "optim.pa_loss_weight": 0.5}
    i = table.nearest({"model.channels": 16, "optim.lr": 9e-4, "optim.pa_loss_weight": 1.0})
    assert table.configs[i]["params"]["optim.lr"] == 6e-4  # log distance: 9e-4 is nearer 6e-4 than 2e-3


def test_replay_json_shape_baseline_and_determinism(bench):
    table = bench.Table(tiny_table())
    methods = ["random+fifo", "random+asha", "tpe+asha"]
    out = bench.run_benchmark(table, methods, [0, 1], workers=2, budget_trials=3, cap=2.0,
                              metric="pa_mpjpe_mm", log=lambda s: None)
    assert out["seeds"] == 2
    assert out["curves"]["configs"] == 12 and out["curves"]["epochs"] == 4
    assert out["budget"]["trial_epochs"] == 12
    assert out["optimum"]["pa_mpjpe_mm"]["value"] == pytest.approx(38 - 15 - 1 - 0.5 + 10 / 4)
    for m in methods:
        s = out["methods"][m]
        for key in ("cost_ratio_median", "cost_ratio_p25", "cost_ratio_p75", "final_regret_mm"):
            assert math.isfinite(s[key]), (m, key)
        assert s["cost_ratio_p25"] <= s["cost_ratio_median"] <= s["cost_ratio_p75"] <= 2.0
        assert all(r["trial_epochs"] >= 12 for r in s["per_seed"])
    base = out["methods"]["random+fifo"]
    for row in base["per_seed"]:
        # the baseline reaches its own final best within its budget: ratio in (0, 1], and its
        # final best is the target the others are measured against
        assert row["reached"] and 0 < row["cost_ratio"] <= 1.0
        assert row["final_best"] == row["target"]
        # FIFO runs whole trials: the budget of 3 full trials of 4 epochs is 3 trials (2 workers)
        assert row["trials"] in (3, 4)
    # The baseline's best arrives no earlier than its first trial's last epoch (every curve falls)
    assert min(r["cost_ratio"] for r in base["per_seed"]) >= 4 / 12
    # ASHA stops trials: more trials than FIFO on the same budget
    assert out["methods"]["random+asha"]["trials_median"] > base["trials_median"]
    again = bench.run_benchmark(table, methods, [0, 1], workers=2, budget_trials=3, cap=2.0,
                                metric="pa_mpjpe_mm", log=lambda s: None)
    assert again["methods"] == out["methods"]


def test_a_method_never_reaching_the_target_is_capped(bench):
    table = bench.Table(tiny_table())
    replay = bench.Replay(table, bench.method_spec(bench.load_spec("quick"), "random+fifo", 0, 4, 2), 2, 0, 12,
                          "pa_mpjpe_mm").run()
    assert replay.spent == 12
    best = replay.trace[-1][2]
    assert bench.first_reach(replay.trace, best - 100.0) is None  # -> counted as cap by run_benchmark
