"""``numasweep check``: a regression gate for CI (asv / ReFrame style): did this run get slower?

Points of the baseline and of the run are matched on (host fingerprint, slot, build
name, settings, PP/TG size, N_KV); S_PP and S_TG are compared separately, one-sided
(only slower is bad). A comparison is a *regression* when the run's mean is more than
``max_drop`` below the baseline's AND, with at least two repetitions on both sides,
Welch's t-test (one-sided, unequal variances) says the run is slower at ``alpha``. With
a single repetition on either side no test is possible: a drop beyond the threshold
counts as a regression, and the output says it was not tested.

Hosts are comparable when their profile fingerprints (hardware + tuning state, not the
host name) are equal; ``allow_host_mismatch`` compares across hosts (and pools the
hosts of a side that share a key). Verdict: exit 0 pass, 1 regression, 2 nothing to
compare (a misconfigured gate is not a pass).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from xml.etree import ElementTree as ET

from orchestrator.errors import NumasweepError
from orchestrator.progress import settings_in_words, varying_keys
from orchestrator.report_data import Stat

FORMATS = ("text", "json", "junit")
PHASES = ("pp", "tg")


class CheckError(NumasweepError):
    """The gate cannot compare what it was given (no such run, no comparable host, ...)."""


@dataclass(frozen=True)
class Side:
    """One side of the gate: a run of a store, or a bundle; ``points`` as ``Store.points`` dicts plus
    ``host_fp`` (the host profile's fingerprint, or None when the host is unknown)."""
    label: str
    points: tuple[dict, ...]


@dataclass(frozen=True)
class Comparison:
    host: str
    slot: str
    build: str | None
    settings: str           # in words: what differs between the compared series
    phase: str              # pp | tg
    size: int               # PP / TG tokens
    n_kv: int
    base: Stat
    run: Stat
    change: float           # run mean / base mean - 1
    p_value: float | None   # one-sided, H1: run slower; None: not tested
    regression: bool

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    def verdict(self, max_drop: float, alpha: float) -> str:
        if self.regression:
            return "REGRESSION" + ("" if self.tested else " (untested: 1 repetition)")
        if self.change < -max_drop:
            return "slower, not significant" if self.tested else "slower"
        if self.change < 0:
            return f"within {max_drop:.0%}"
        return "faster" if self.change > max_drop else "same"


@dataclass(frozen=True)
class CheckResult:
    baseline: str
    run: str
    max_drop: float
    alpha: float
    comparisons: tuple[Comparison, ...]
    unmatched: tuple[str, ...]   # series on one side only
    host_mismatch_allowed: bool

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.regression]

    @property
    def untested(self) -> bool:
        return any(not c.tested for c in self.comparisons)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def side_from_store(store, run_id: int) -> Side:
    run = store.run(run_id)  # raises naming the store when there is no such run
    hosts = {h["id"]: h for h in store.hosts()}
    points = []
    for p in store.points(run_id):
        host = hosts.get(p["host_id"]) or {}
        profile = host.get("profile") or {}
        points.append({**p, "host_fp": profile.get("fingerprint")})
    label = f"run {run_id}" + (f" \"{run['label']}\"" if run.get("label") else "") + f" of {store.path}"
    return Side(label, tuple(points))


def one_sided_p(base: Stat, run: Stat) -> float | None:
    """P(run at least this much slower by chance); None with fewer than 2 samples on a side."""
    if base.n < 2 or run.n < 2:
        return None
    if not (base.sd or run.sd):  # identical repeated values: certain either way
        return 0.0 if run.mean < base.mean else 1.0
    from scipy import stats

    p = float(stats.ttest_ind(run.samples, base.samples, equal_var=False, alternative="less").pvalue)
    return None if math.isnan(p) else p


def _key(p: dict, phase: str, allow_host_mismatch: bool) -> tuple:
    host = None if allow_host_mismatch else p.get("host_fp")
    return (host, p.get("slot") or "", p.get("build"), p["settings_key"], phase, p[phase], p["n_kv"])


def _group(side: Side, allow: bool) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for p in side.points:
        for phase in PHASES:
            if p[phase] > 0:
                out[_key(p, phase, allow)].append(p)
    return out


def check(baseline: Side, run: Side, *, max_drop: float = 0.05, alpha: float = 0.05,
          allow_host_mismatch: bool = False) -> CheckResult:
    if not 0 <= max_drop < 1:
        raise CheckError(f"--max-drop must be a percentage in [0, 100), got {max_drop * 100:g}")
    if not 0 < alpha < 1:
        raise CheckError(f"--alpha must be in (0, 1), got {alpha:g}")
    for side in (baseline, run):
        if not side.points:
            raise CheckError(f"{side.label}: holds no points")
        if not allow_host_mismatch and any(p.get("host_fp") is None for p in side.points):
            raise CheckError(f"{side.label}: some points have no host profile (an import without --host-profile?), "
                             "so their host cannot be matched; pass --allow-host-mismatch to compare anyway")
    a, b = _group(baseline, allow_host_mismatch), _group(run, allow_host_mismatch)
    common = sorted(set(a) & set(b), key=repr)
    if not common:
        loose_a, loose_b = _group(baseline, True), _group(run, True)
        if not allow_host_mismatch and set(loose_a) & set(loose_b):
            hosts_a = sorted({_host(p) for p in baseline.points})
            hosts_b = sorted({_host(p) for p in run.points})
            raise CheckError(f"no comparable host: baseline on {', '.join(hosts_a)}, run on {', '.join(hosts_b)} "
                             "(host profile fingerprints differ); pass --allow-host-mismatch to compare anyway")
        raise CheckError(f"nothing to compare: no (host, slot, build, settings, N_KV) is in both {baseline.label} "
                         f"and {run.label}")
    vary = varying_keys([p["settings"] for p in (*baseline.points, *run.points)])
    comparisons = []
    for key in common:
        _host_fp, slot, build, _skey, phase, size, n_kv = key
        base_pts, run_pts = a[key], b[key]
        sb = Stat.of([p[f"speed_{phase}"] for p in base_pts])
        sr = Stat.of([p[f"speed_{phase}"] for p in run_pts])
        change = sr.mean / sb.mean - 1 if sb.mean else 0.0
        p_value = one_sided_p(sb, sr)
        dropped = change < -max_drop
        regression = dropped and (p_value is None or p_value < alpha)
        comparisons.append(Comparison(
            host=_host(run_pts[0]), slot=slot, build=build, settings=settings_in_words(run_pts[0]["settings"], vary),
            phase=phase, size=size, n_kv=n_kv, base=sb, run=sr, change=change, p_value=p_value,
            regression=regression))
    unmatched = [f"{side.label}: {_describe(k)}" for side, mine, other in ((baseline, a, b), (run, b, a))
                 for k in sorted(set(mine) - set(other), key=repr)]
    return CheckResult(baseline.label, run.label, max_drop, alpha, tuple(comparisons), tuple(unmatched),
                       allow_host_mismatch)


def _host(p: dict) -> str:
    return str(p.get("host_name") or p.get("host_fingerprint") or "unknown host")


def _describe(key: tuple) -> str:
    _h, slot, build, _s, phase, size, n_kv = key
    return f"{slot or '-'} build {build or '-'} {phase}{size} N_KV {n_kv}"


# -- output --------------------------------------------------------------------------------
def render_text(res: CheckResult) -> str:
    moved = [c for c in res.comparisons if c.regression or abs(c.change) > res.max_drop]
    lines = [f"numasweep check: {res.run} against baseline {res.baseline}",
             f"{len(res.comparisons)} comparisons (S_PP and S_TG per host, slot, build, settings, N_KV); "
             f"a regression is a drop of more than {res.max_drop:.0%}, significant at alpha {res.alpha:g} "
             "(Welch's t-test, one-sided) when both sides have repetitions"]
    if res.host_mismatch_allowed:
        lines.append("hosts were not required to match (--allow-host-mismatch)")
    if moved:
        lines += ["", "| host | slot | build | settings | test | N_KV | baseline t/s | run t/s | change | n | p | verdict |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---|---:|---|"]
        for c in moved:
            p = "—" if c.p_value is None else f"{c.p_value:.3g}"
            lines.append(f"| {c.host} | {c.slot} | {c.build or '-'} | {c.settings} | {c.phase}{c.size} | {c.n_kv} | "
                         f"{c.base.fmt()} | {c.run.fmt()} | {c.change:+.1%} | {c.base.n}/{c.run.n} | {p} | "
                         f"{c.verdict(res.max_drop, res.alpha)} |")
    else:
        lines.append(f"nothing moved by more than {res.max_drop:.0%}")
    if res.untested:
        lines.append("note: some comparisons have a single repetition on a side, so no test was possible for them: "
                     "a drop beyond the threshold counts as a regression (measure with repetitions >= 2)")
    if res.unmatched:
        lines.append(f"not compared ({len(res.unmatched)} series on one side only): " + "; ".join(res.unmatched[:8])
                     + (" ..." if len(res.unmatched) > 8 else ""))
    n = len(res.regressions)
    lines.append(f"FAIL: {n} regression(s)" if n else "PASS: no regression")
    return "\n".join(lines) + "\n"


def _comparison_json(c: CheckResult, comp: Comparison) -> dict:
    d = asdict(comp)
    for side in ("base", "run"):
        st = d.pop(side)
        d[side] = {"mean": st["mean"], "sd": st["sd"], "n": st["n"], "samples": list(st["samples"])}
    d["tested"] = comp.tested
    d["verdict"] = comp.verdict(c.max_drop, c.alpha)
    return d


def render_json(res: CheckResult) -> str:
    return json.dumps({
        "baseline": res.baseline, "run": res.run, "max_drop": res.max_drop, "alpha": res.alpha,
        "host_mismatch_allowed": res.host_mismatch_allowed, "status": "fail" if res.regressions else "pass",
        "regressions": len(res.regressions), "untested": res.untested,
        "comparisons": [_comparison_json(res, c) for c in res.comparisons], "unmatched": list(res.unmatched),
    }, indent=2) + "\n"


def render_junit(res: CheckResult) -> str:
    suite = ET.Element("testsuite", name="numasweep check", tests=str(len(res.comparisons)),
                       failures=str(len(res.regressions)), errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for name, value in (("baseline", res.baseline), ("run", res.run), ("max_drop", f"{res.max_drop:g}"),
                        ("alpha", f"{res.alpha:g}")):
        ET.SubElement(props, "property", name=name, value=value)
    for c in res.comparisons:
        case = ET.SubElement(suite, "testcase", classname=f"{c.host}.{c.slot}.{c.build or 'default'}",
                             name=f"S_{c.phase.upper()} {c.phase}{c.size} N_KV={c.n_kv} {c.settings}".strip())
        detail = (f"baseline {c.base.fmt()} t/s (n={c.base.n}), run {c.run.fmt()} t/s (n={c.run.n}), "
                  f"change {c.change:+.1%}, p={'untested' if c.p_value is None else f'{c.p_value:.3g}'}")
        if c.regression:
            ET.SubElement(case, "failure", message=f"dropped {-c.change:.1%} (> {res.max_drop:.0%})",
                          type="regression").text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
        if not c.tested:
            ET.SubElement(case, "system-err").text = "no test was possible: a single repetition on a side"
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


RENDERERS = {"text": render_text, "json": render_json, "junit": render_junit}
