"""Report data: points grouped into series, aggregated per N_KV, compared with a test.

A *series* is one line on a plot: the points of one run, host, slot and engine
settings. Phases are kept apart — a llama-bench ``pp512`` test gives PP numbers
only and a ``tg128`` test TG numbers only — so a point contributes to a phase
only when it measured it (pp > 0 or tg > 0).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

PHASES = ("pp", "tg")
ALPHA = 0.05
TEST_NAME = "Welch's t-test (two-sided, unequal variances, alpha 0.05, not corrected for multiple N_KV)"


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and count of one phase's speeds (t/s) or times (s)."""
    mean: float
    sd: float | None  # None with a single sample
    n: int
    samples: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        if not values:
            raise ValueError("Stat of no values")
        n = len(values)
        mean = math.fsum(values) / n
        # Plain float sample sd: statistics.stdev is exact but ~20x slower, and reports aggregate 10^5 rows.
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean, sd, n, tuple(values))

    def fmt(self, digits: int = 2) -> str:
        if self.sd is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclass
class Series:
    key: tuple
    run_id: int
    run_label: str
    host: str | None
    slot: str | None
    settings: dict
    simulated: bool
    build: str | None = None
    points: list[dict] = field(default_factory=list)
    label: str = ""
    # Aggregates are asked for by every section; computed once (points are complete by then).
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def _cached(self, key: tuple, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def phase_points(self, phase: str) -> list[dict]:
        return self._cached(("points", phase), lambda: [p for p in self.points if p[phase] > 0])

    def by_n_kv(self, phase: str) -> dict[int, list[dict]]:
        def group():
            out: dict[int, list[dict]] = defaultdict(list)
            for p in self.phase_points(phase):
                out[p["n_kv"]].append(p)
            return dict(sorted(out.items()))
        return self._cached(("by_n_kv", phase), group)

    def speed(self, phase: str) -> dict[int, Stat]:
        return self._cached(("speed", phase), lambda: {
            n: Stat.of([p[f"speed_{phase}"] for p in ps]) for n, ps in self.by_n_kv(phase).items()})

    def time(self, phase: str) -> dict[int, Stat]:
        return self._cached(("time", phase), lambda: {
            n: Stat.of([p[f"t_{phase}"] for p in ps]) for n, ps in self.by_n_kv(phase).items()})

    def size(self, phase: str) -> int | None:
        sizes = {p[phase] for p in self.phase_points(phase)}
        return sizes.pop() if len(sizes) == 1 else None

    def max_noise(self) -> float | None:
        values = [p["noise"] for p in self.points if p.get("noise") is not None]
        return max(values) if values else None


def build_series(points: list[dict], runs: dict[int, dict]) -> list[Series]:
    """Group points; phase sizes join the identity only when they vary within a run."""
    sizes: dict[int, dict[str, set]] = defaultdict(lambda: {"pp": set(), "tg": set()})
    for p in points:
        for ph in PHASES:
            if p[ph] > 0:
                sizes[p["run_id"]][ph].add(p[ph])
    groups: dict[tuple, Series] = {}
    for p in points:
        rid = p["run_id"]
        shape = tuple(p[ph] if len(sizes[rid][ph]) > 1 else None for ph in PHASES)
        key = (rid, p["host_id"], p["slot"], p.get("build"), p["settings_key"]) + shape
        if key not in groups:
            run = runs[rid]
            groups[key] = Series(key=key, run_id=rid, run_label=run.get("label") or f"run {rid}",
                                 host=p.get("host_name") or p.get("host_fingerprint"), slot=p["slot"],
                                 settings=p["settings"], simulated=bool(p["simulated"]), build=p.get("build"))
        groups[key].points.append(p)
    series = list(groups.values())
    _label(series)
    return series


def varying_settings(series: list[Series]) -> list[str]:
    keys = sorted({k for s in series for k in s.settings})
    return [k for k in keys if len({repr(s.settings.get(k)) for s in series}) > 1]


def _label(series: list[Series]) -> None:
    """Short, unique labels: the run label (several runs), then what varies inside the run."""
    multi_run = len({s.run_id for s in series}) > 1
    multi_host = len({s.host for s in series}) > 1
    by_run: dict[int, list[Series]] = defaultdict(list)
    for s in series:
        by_run[s.run_id].append(s)
    for rid, members in by_run.items():
        vary = [k for k in varying_settings(members) if k != "model"]
        multi_slot = len({m.slot for m in members}) > 1
        multi_build = len({m.build for m in members}) > 1
        for s in members:
            parts = [s.run_label] if multi_run or not (vary or multi_build) else []
            if multi_build and s.build:
                parts.append(s.build)
            if multi_host and s.host:
                parts.append(str(s.host))
            if multi_slot and s.slot:
                parts.append(str(s.slot))
            parts += [f"{k}={_spell(s.settings.get(k))}" for k in vary][:4]
            if len(s.key) > 5:
                parts += [f"{ph}{v}" for ph, v in zip(PHASES, s.key[5:]) if v is not None]
            if s.simulated:
                parts.append("(simulated)")
            s.label = " ".join(parts) or s.run_label
    seen: dict[str, int] = defaultdict(int)
    for s in series:
        seen[s.label] += 1
    for s in series:
        if seen[s.label] > 1:
            s.label = f"{s.label} [run {s.run_id}]"


def _spell(value) -> str:
    if value is None:
        return "?"  # a setting the build was not told (unknown)
    return str(value).lower() if isinstance(value, bool) else str(value)


# -- A/B ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    n_kv: int
    a: Stat
    b: Stat
    ratio: float          # b.mean / a.mean
    p_value: float | None  # None: cannot test (a single sample, or no variance)
    interval: tuple[float, float] | None = None  # 95% interval of the ratio (None: a single sample)

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def welch_p(a: Stat, b: Stat) -> float | None:
    if a.n < 2 or b.n < 2:
        return None
    if not (a.sd or b.sd):
        return None if a.mean == b.mean else 0.0  # identical repeated values that differ: certain
    from scipy import stats

    p = float(stats.ttest_ind(a.samples, b.samples, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def ratio_interval(a: Stat, b: Stat, level: float = 0.95) -> tuple[float, float] | None:
    """Interval of b.mean / a.mean: the delta method on the log ratio, Welch-Satterthwaite df."""
    if a.n < 2 or b.n < 2 or a.mean <= 0 or b.mean <= 0:
        return None
    va, vb = (a.sd / a.mean) ** 2 / a.n, (b.sd / b.mean) ** 2 / b.n
    se = math.sqrt(va + vb)
    ratio = b.mean / a.mean
    if se == 0:
        return ratio, ratio
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    from scipy import stats

    t = float(stats.t.ppf(0.5 + level / 2, df))
    return ratio * math.exp(-t * se), ratio * math.exp(t * se)


def attrs(s: Series) -> dict:
    """What tells two series apart besides their samples: settings, host, slot, build, phase sizes."""
    return {**s.settings, "host": s.host, "slot": s.slot, "build": s.build,
            "pp": s.size("pp"), "tg": s.size("tg")}


def pair_sides(a: list[Series], b: list[Series], ignore: set[str]) -> tuple[list[tuple[str, list, list]], list[str]]:
    """Split an A/B into comparisons of like with like, so that only true repetitions pool.

    Keys that vary within side A or within side B (apart from ``ignore``, the selector's own
    keys) group each side; every A group is compared with each B group that has the same
    values on those keys (a None, an unknown setting, matches any value). Returns
    ``[(what the pair shares, a_group, b_group)]`` and the keys used."""
    def varying(side):
        keys = {k for s in side for k in attrs(s)}
        return {k for k in keys if len({repr(attrs(s).get(k)) for s in side}) > 1}

    vary = sorted((varying(a) | varying(b)) - set(ignore))

    def groups(side):
        out: dict[tuple, list] = {}
        for s in side:
            out.setdefault(tuple(attrs(s).get(k) for k in vary), []).append(s)
        return out

    pairs = []
    for ka, ga in groups(a).items():
        for kb, gb in groups(b).items():
            if all(x == y or x is None or y is None for x, y in zip(ka, kb)):
                desc = ", ".join(f"{k}={_spell(x if x is not None else y)}" for k, x, y in zip(vary, ka, kb))
                pairs.append((desc, ga, gb))
    return pairs, vary


def compare(a_points: list[dict], b_points: list[dict], phase: str) -> list[Comparison]:
    """Per N_KV present on both sides: pooled samples of each side, ratio and Welch's p."""
    def pooled(points):
        out: dict[int, list[float]] = defaultdict(list)
        for p in points:
            if p[phase] > 0:
                out[p["n_kv"]].append(p[f"speed_{phase}"])
        return out

    a, b = pooled(a_points), pooled(b_points)
    rows = []
    for n_kv in sorted(set(a) & set(b)):
        sa, sb = Stat.of(a[n_kv]), Stat.of(b[n_kv])
        rows.append(Comparison(n_kv, sa, sb, sb.mean / sa.mean if sa.mean else math.inf, welch_p(sa, sb),
                               ratio_interval(sa, sb)))
    return rows


def _fmt_kv(n: int) -> str:
    return str(n)


def verdict(rows: list[Comparison], phase: str, a_name: str, b_name: str) -> str:
    """One line: contiguous N_KV ranges where B is faster / slower / not different."""
    label = phase.upper()
    if not rows:
        return f"{label}: no N_KV measured by both {a_name} and {b_name}."
    if all(r.a.n < 2 or r.b.n < 2 for r in rows):
        lo, hi = min(r.ratio for r in rows), max(r.ratio for r in rows)
        return (f"{label}: {b_name}/{a_name} = {lo:.3f}–{hi:.3f} over N_KV {_fmt_kv(rows[0].n_kv)}–"
                f"{_fmt_kv(rows[-1].n_kv)}; one sample per point, so no significance can be claimed.")
    spans: list[list] = []
    for r in rows:
        kind = ("untested" if r.p_value is None and (r.a.n < 2 or r.b.n < 2)
                else "faster" if r.significant and r.ratio > 1 else "slower" if r.significant else "same")
        if spans and spans[-1][0] == kind:
            spans[-1][1].append(r)
        else:
            spans.append([kind, [r]])
    parts = []
    for kind, rs in spans:
        where = (f"N_KV {_fmt_kv(rs[0].n_kv)}" if len(rs) == 1
                 else f"N_KV {_fmt_kv(rs[0].n_kv)}–{_fmt_kv(rs[-1].n_kv)}")
        if kind == "same":
            parts.append(f"no significant difference for {where}")
        elif kind == "untested":
            parts.append(f"one sample, no significance can be claimed for {where}")
        else:
            pct = sorted(abs(r.ratio - 1) * 100 for r in rs)
            amount = f"{pct[0]:.0f}%" if round(pct[0]) == round(pct[-1]) else f"{pct[0]:.0f}–{pct[-1]:.0f}%"
            parts.append(f"{b_name} {kind} by {amount} for {where}")
    return f"{label}: " + "; ".join(parts) + "."
