"""Power-law fits of benchmark timings: y = a x1^b1 x2^b2 ... by least squares on logarithms.

Choices:

- A fit needs at least ``MIN_DISTINCT`` = 3 distinct values of every variable: two points always lie on
  a line, so an exponent from two sizes has no residual to tell a power law from fixed per-call costs or
  a change of regime; with three or more the fit can at least disagree with them.
- Points with a non-positive or missing y (an unmeasured peak) make the fit refuse, since log y is
  undefined, rather than silently dropping them.
- The refusal is returned as one line naming every variable that falls short and its count, for the
  bench to print.
"""

from __future__ import annotations

import math

import torch

MIN_DISTINCT = 3


def fit_power_law(variables: dict[str, list[float]], ys: list[float | None],
                  min_distinct: int = MIN_DISTINCT) -> tuple[dict[str, float] | None, str | None]:
    """Least-squares exponents of log y = a + sum_k b_k log x_k.

    variables: name -> values (one per point, all the length of ``ys``). Returns ({name: b_k}, None), or
    (None, reason) when a variable has fewer than ``min_distinct`` distinct values or a y is not > 0.
    """
    n = len(ys)
    reasons = []
    for name, xs in variables.items():
        if len(xs) != n:
            raise ValueError(f"fit_power_law: {name} has {len(xs)} values for {n} timings")
        distinct = len(set(xs))
        if distinct < min_distinct:
            reasons.append(f"too few {name} ({distinct} distinct value{'s' if distinct != 1 else ''}; need >= {min_distinct})")
        elif any(x <= 0 for x in xs):
            reasons.append(f"{name} must be > 0 to take logarithms")
    if any(y is None or not y > 0 for y in ys):
        reasons.append("a measurement is missing or not > 0")
    if reasons:
        return None, "; ".join(reasons)
    names = list(variables)
    X = torch.tensor([[1.0] + [math.log(variables[k][i]) for k in names] for i in range(n)], dtype=torch.float64)  # (n, 1+K)
    y = torch.tensor([math.log(v) for v in ys], dtype=torch.float64)  # (n,)
    coef = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]  # (1+K,)
    return {k: float(coef[1 + i]) for i, k in enumerate(names)}, None


__all__ = ["MIN_DISTINCT", "fit_power_law"]
