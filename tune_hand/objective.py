"""What a run or a search optimises, and every "is this better?" decision, in one object.

    obj = Objective.single("pa_mpjpe_mm", "min")
    obj.better(21.0, 23.5)              # True: lower is better
    obj.worst()                         # inf (the starting "best" of a run)
    obj.sentinel                        # 1e6: what a diverged trial reports, the worst finite value
    obj.best_row(rows)                  # the best scored row of a trial's results
    sorted(trials, key=lambda t: obj.sort_key(t["best_metric"]))   # best first, unscored last
    Objective(("pa_mpjpe_mm", "params_m"), ("min", "min")).dominates(a, b)   # several objectives

Syne Tune and Optuna hold a search's direction in one place (`mode`, `direction`), so the code
asks one object instead of comparing with `<` or `>` wherever a best is picked. The training
loop (its best epoch, `best.pt`), the trainable (the divergence sentinel), the scheduler, the
sampler, the readers (`status`, `best`), the live table and the report all take an Objective.

It lives below training (training picks its best epoch with it), not in `tune_hand.sweep`,
which re-exports it: the sweep is one user of it among several.

A value that is None, NaN or infinite is never "better" than anything, and every finite
value is better than it; a row is scored when its metric is finite and it did not diverge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

MODES = ("min", "max")
# What a diverged epoch reports (mm): never a real error, and finite, so that ASHA ranks the
# trial last in its rung (NaN is skipped by its cutoff; inf makes the rung's percentile NaN).
DIVERGED_VALUE = 1.0e6
DEFAULT_METRIC = "pa_mpjpe_mm"  # the paper's score (DESIGN section 4)

T = TypeVar("T")


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Objective:
    """One or more metrics with their modes; the first is the primary one that ranks trials."""

    metrics: tuple[str, ...] = (DEFAULT_METRIC,)
    modes: tuple[str, ...] = ("min",)

    def __post_init__(self) -> None:
        if not self.metrics or len(self.metrics) != len(self.modes):
            raise ValueError(f"an objective needs one mode per metric, got {self.metrics} and {self.modes}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"mode {bad[0]!r}: expected min or max")

    @classmethod
    def single(cls, metric: str = DEFAULT_METRIC, mode: str = "min") -> Objective:
        return cls((metric,), (mode,))

    # -- the primary metric ------------------------------------------------------------------
    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]

    @property
    def sign(self) -> int:
        """+1 for min, -1 for max: sign * value is lower-is-better."""
        return 1 if self.mode == "min" else -1

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "minimize" if self.mode == "min" else "maximize"

    @property
    def sentinel(self) -> float:
        """The finite worst value a diverged trial reports for the primary metric."""
        return self.sign * DIVERGED_VALUE

    def worst(self) -> float:
        """Worse than any finite value: the best of a run that has not scored yet."""
        return self.sign * math.inf

    def better(self, a: Any, b: Any) -> bool:
        """Whether primary value `a` is strictly better than `b` (non-finite values never are)."""
        if not finite(a):
            return False
        if not finite(b):
            return True
        return self.sign * a < self.sign * b

    def sort_key(self, value: Any) -> tuple[bool, float]:
        """Ascending order = best first; None and non-finite values last."""
        return (not finite(value), self.sign * value if finite(value) else 0.0)

    def scored(self, row: dict[str, Any]) -> bool:
        """Whether a result row holds a usable primary value (finite, and not a diverged epoch)."""
        return finite(row.get(self.metric)) and not row.get("diverged")

    def best_of(self, items: Iterable[T], value: Callable[[T], Any]) -> T | None:
        """The item with the best finite `value(item)`; the first of equals; None if none is finite."""
        best, best_value = None, None
        for item in items:
            v = value(item)
            if finite(v) and (best is None or self.better(v, best_value)):
                best, best_value = item, v
        return best

    def worst_of(self, values: Iterable[Any]) -> float | None:
        """The worst finite value (e.g. the top of a plot for min), None if none is finite."""
        kept = [v for v in values if finite(v)]
        return (max(kept) if self.mode == "min" else min(kept)) if kept else None

    def best_row(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """The best scored row (diverged epochs excluded)."""
        return self.best_of((r for r in rows if self.scored(r)), lambda r: r[self.metric])

    # -- several objectives --------------------------------------------------------------------
    def dominates(self, a: Sequence[float], b: Sequence[float]) -> bool:
        """Pareto dominance over all metrics: `a` is no worse in each and better in one."""
        if len(a) != len(self.metrics) or len(b) != len(self.metrics):
            raise ValueError(f"expected {len(self.metrics)} values per point, got {len(a)} and {len(b)}")
        signs = [1 if m == "min" else -1 for m in self.modes]
        no_worse = all(s * x <= s * y for s, x, y in zip(signs, a, b))
        return no_worse and any(s * x < s * y for s, x, y in zip(signs, a, b))

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "modes": list(self.modes)}
