"""A table cell over seeds: mean, standard deviation, n and the per-seed values, and whether two
cells differ by more than their seed spread (Welch's t-test)."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the two-sided level of Welch's t-test at which two cells count as different
SIGNIFICANCE_LEVEL = 0.05
#: how a CSV joins a cell's per-seed values (and a sources CSV its metrics files)
SEED_SEPARATOR = ";"


@dataclass(frozen=True)
class SeedCell:
    """The per-seed values (mIoU %) of one table cell, in seed order."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation (ddof 1); NaN for fewer than two seeds."""
        if self.n < 2:
            return math.nan
        mean = self.mean
        return math.sqrt(math.fsum((value - mean) ** 2 for value in self.values) / (self.n - 1))


def spread_columns(column: str) -> tuple[str, str, str]:
    """The CSV columns beside value column ``column``: its std, n and per-seed values."""
    return f"{column} std", f"{column} n", f"{column} seeds"


def join_values(values) -> str:
    return SEED_SEPARATOR.join(f"{value:.2f}" for value in values)


def split_values(text: str) -> tuple[float, ...]:
    """Per-seed values from a CSV cell written by ``join_values`` (empty: none)."""
    return tuple(float(part) for part in text.split(SEED_SEPARATOR)) if text else ()


def differs(first: SeedCell, second: SeedCell, level: float = SIGNIFICANCE_LEVEL) -> int:
    """+1 / -1 when ``first``'s mean is above / below ``second``'s by more than the seed spread
    (Welch's unequal-variance t-test, two-sided, p < ``level``), 0 when not, or when either cell
    has fewer than two seeds or the test is undefined (both without spread and equal)."""
    if first.n < 2 or second.n < 2:
        return 0
    from scipy.stats import ttest_ind

    result = ttest_ind(first.values, second.values, equal_var=False)
    if math.isnan(result.pvalue) or result.pvalue >= level:
        return 0
    return 1 if first.mean > second.mean else -1
