"""Is a difference between two modes real, or seed noise? Mean ± 95 % interval over seeds, and a paired t-test.

A comparison trains each mode with the same few seeds (seed s of every mode sees the same data order and the same
evaluation prompts), so each metric is a small sample: one value per seed. Two tools, on plain lists of floats:

- `interval`: the mean and its Student t interval, mean ± t_{1-α/2, n-1} · sd / √n (Student 1908). With one seed
  there is no spread to measure, so the interval is undefined and reported as such, never guessed.
- `paired_test`: a paired t-test on the per-seed differences a_s − b_s. Pairing removes what the seed does to
  both modes alike (data order, prompts), so only the mode's own effect and its seed-to-seed jitter remain.

Why a t-test and not an exact sign-flip permutation test: with n seeds a sign-flip test has only 2^n equally likely
sign patterns, so its smallest two-sided p-value is 2 / 2^n = 0.25 at three seeds: it could never call a
difference "beyond noise" at α = 0.05, however large. The t-test uses the size of the differences, not only
their signs, at the price of assuming they are roughly normal; with three seeds (2 degrees of freedom,
t_{0.975, 2} = 4.30) it still demands a difference about four times its standard error.

The t distribution is computed here by hand (no scipy): for whole degrees of freedom ν, P(|T| < t) has a closed
form in θ = atan(t / √ν) (Abramowitz & Stegun 26.7.3-4), and a quantile is found by bisection on it.
"""
from __future__ import annotations

import math

ALPHA = 0.05  # the test level, and 1 - the interval's coverage


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def sample_sd(values: list[float]) -> float:
    """Standard deviation with Bessel's n - 1 (the unbiased variance); needs at least two values."""
    if len(values) < 2:
        raise ValueError(f"a standard deviation needs at least 2 values, got {len(values)}")
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with `df` (whole) degrees of freedom, t >= 0 (Abramowitz & Stegun 26.7.3-4).

    With θ = atan(t/√ν): ν = 1 gives 2θ/π; odd ν adds sinθ·(cosθ + 2/3 cos³θ + (2·4)/(3·5) cos⁵θ + ...) inside
    the 2/π; even ν is sinθ·(1 + 1/2 cos²θ + (1·3)/(2·4) cos⁴θ + ...), each series ending at the cos^(ν-2) term.
    """
    if df < 1 or df != int(df):
        raise ValueError(f"degrees of freedom must be a whole number >= 1, got {df}")
    if math.isinf(t):
        return 1.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df, 2):  # term for cos^k: ((k-1)/k) times the previous one
            term *= c2 * (k - 1) / k
            total += term
        return min(1.0, s * total)
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for k in range(3, df, 2):  # term for cos^k: ((k-1)/k) · cos² times the previous one
        term *= c2 * (k - 1) / k
        total += term
    return min(1.0, 2 / math.pi * (theta + s * total))


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|): the two-sided p-value of a t statistic."""
    return max(0.0, 1.0 - t_central(t, df))


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, for p in [0.5, 1) (by symmetry that is all an interval needs); bisection."""
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile: p must be in [0.5, 1), got {p}")
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < target:
        hi *= 2
    for _ in range(200):  # halves the bracket each time: far below float precision long before 200
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_central(mid, df) < target else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2


def interval(values: list[float], level: float = 1 - ALPHA) -> dict:
    """Mean and Student t interval of `values` (one per seed), as a JSON-ready dict.

    half_width = t_{(1+level)/2, n-1} · sd / √n; with n = 1 it is None (no spread to measure) and so are low and
    high. `values` are kept so a reader can recompute anything.
    """
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"an interval needs finite values, got {values}")
    n, m = len(values), mean(values)
    half = None if n < 2 else t_quantile((1 + level) / 2, n - 1) * sample_sd(values) / math.sqrt(n)
    return {"mean": m, "half_width": half, "low": None if half is None else m - half,
            "high": None if half is None else m + half, "n": n, "level": level, "values": values}


def format_interval(iv: dict, spec: str = ".3f") -> str:
    """'0.984 ± 0.012', or '0.984 (n=1, no interval)' when one seed gives nothing to measure the spread with."""
    if iv["half_width"] is None:
        return f"{format(iv['mean'], spec)} (n={iv['n']}, no interval)"
    return f"{format(iv['mean'], spec)} ± {format(iv['half_width'], spec)}"


def paired_test(a: list[float], b: list[float], alpha: float = ALPHA) -> dict:
    """Paired t-test of a against b (a[i] and b[i] share seed i): is the mean difference a - b beyond noise?

    t = mean(d) / (sd(d) / √n) with n - 1 degrees of freedom, d = a - b. Returns the test's name, n, the mean
    difference and its interval, t, df, the two-sided p-value and `beyond_noise` (p < alpha). With fewer than 2
    pairs there is no test: t, p and beyond_noise are None. When every difference is the same (sd 0), t is
    infinite (p = 0) unless they are all 0 (p = 1).
    """
    if len(a) != len(b):
        raise ValueError(f"a paired test needs one b per a, got {len(a)} and {len(b)} values")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    result = {"test": "paired t-test (two-sided)", "n": len(d), "alpha": alpha, "difference": interval(d),
              "t": None, "df": None, "p": None, "beyond_noise": None}
    if len(d) < 2:
        return result
    m, sd, df = mean(d), sample_sd(d), len(d) - 1
    if sd == 0:
        t, p = (0.0, 1.0) if m == 0 else (math.copysign(math.inf, m), 0.0)
    else:
        t = m / (sd / math.sqrt(len(d)))
        p = t_two_sided_p(t, df)
    return {**result, "t": t, "df": df, "p": p, "beyond_noise": p < alpha}
