"""``numasweep report``: sweep tables, comparison plots, A/B statistics, report.md + report.html.

``write_report(store, run_ids, out_dir, baseline=None, compare=None, by=None)``
is the plain function behind the command (``numasweep run`` calls it too).
Selectors for ``baseline`` / ``compare``: a run id (``3``), a run label, or
settings (``k_repack=off`` or ``k_repack=on,threads=4``).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from engine import sweep_table
from orchestrator.errors import ReportError
from engine.options import canonical_name
from orchestrator.report_data import (PHASES, TEST_NAME, Series, Stat, attrs, build_series, compare, pair_sides,
                                      varying_settings, verdict)
from orchestrator.report_plots import memory_plot, speed_plot
from orchestrator.report_render import H, Img, P, Pre, Table, to_html, to_markdown
from orchestrator.store import Store

BY_CHOICES = ("host", "setting")


def default_report_dir(store_path, run_ids) -> Path:
    """A fresh directory next to the store, named after it and the runs; created here, never reused.

    ``numasweep-results/numasweep.db``, runs [3] -> ``numasweep-results/numasweep-reports/run-3``;
    when that exists (a resumed run, a second report, another store of the same name was
    here before) -> ``run-3.2``, ``run-3.3`` ...: a report never overwrites another.
    """
    store_path = Path(store_path)
    ids = list(run_ids)
    if len(ids) <= 4:
        name = "run-" + "_".join(map(str, ids))
    else:
        name = f"runs-{ids[0]}-to-{ids[-1]}" + ("" if len(ids) == ids[-1] - ids[0] + 1 else f"-{len(ids)}")
    base = store_path.parent / f"{store_path.stem}-reports"
    base.mkdir(parents=True, exist_ok=True)
    out, n = base / name, 1
    while True:
        try:
            out.mkdir()  # claims the name atomically: two reports at once never share a directory
            return out
        except FileExistsError:
            n += 1
            out = base / f"{name}.{n}"


def write_report(store: Store, run_ids=None, out_dir=None, baseline=None, compare=None,
                 by: str | None = None) -> Path:
    """Write report.md, report.html and the PNGs into ``out_dir``; returns the HTML path.

    ``out_dir`` None: a new directory next to the store (``default_report_dir``)."""
    if by is not None and by not in BY_CHOICES:
        raise ReportError(f"--by must be one of {', '.join(BY_CHOICES)}, got {by!r}")
    if (baseline is None) != (compare is None):
        raise ReportError("--baseline and --compare go together")
    all_runs = {r["id"]: r for r in store.runs()}
    ids = list(dict.fromkeys(int(i) for i in run_ids)) if run_ids else sorted(all_runs)  # dedupe, keep order
    for rid in ids:
        if rid not in all_runs:
            raise ReportError(f"{store.path}: no run {rid} (known: {', '.join(map(str, all_runs)) or 'none'})")
    if not ids:
        raise ReportError(f"{store.path}: the store holds no runs")
    points = [p for rid in ids for p in store.points(rid)]
    if not points:
        raise ReportError(f"{store.path}: runs {', '.join(map(str, ids))} hold no points yet")
    runs = {rid: all_runs[rid] for rid in ids}
    series = build_series(points, runs)
    hosts = {h["id"]: h for h in store.hosts()}
    out = default_report_dir(store.path, ids) if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    title = f"numasweep report: {Path(store.path).name}, run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
    blocks: list = [H(1, title), P(f"Store {Path(store.path).resolve()}; " + "; ".join(
                        _run_origin(runs[rid]) for rid in ids) + f". {len(points)} points in {len(series)} series.")]
    simulated = {s.simulated for s in series}
    if simulated == {True, False}:
        blocks.append(P("Warning: these runs mix rows from simulated hosts (labelled '(simulated)', pinned onto "
                        "this machine's CPUs) with real ones; pooled tables below include both."))
    elif simulated == {True}:
        blocks.append(P("All rows come from simulated hosts: their speeds are this machine's, not the profiled hosts'."))
    blocks += _plots(series, out)
    blocks += _ab_section(series, runs, baseline, compare)
    blocks += _builds_section(series)
    blocks += _versus_sections(series, by)
    blocks += _bandwidth_section(series, runs, hosts)
    for rid in ids:
        blocks += _run_section(runs[rid], [s for s in series if s.run_id == rid], hosts)

    (out / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(to_html(blocks, title), encoding="utf-8")
    return html_path


def _run_origin(run: dict) -> str:
    """``run 3 "label" (numasweep, ok, started 2026-12-04T10:00:00)``: which run a report came from."""
    label = f' "{run["label"]}"' if run.get("label") else ""
    return f"run {run['id']}{label} ({run['source']}, {run['status']}, started {str(run['started_at'])[:19]})"


# -- sections ----------------------------------------------------------------------------
def _plots(series: list[Series], out: Path) -> list:
    blocks: list = [H(2, "Plots")]
    for phase in PHASES:
        path = speed_plot(series, phase, out)
        if path:
            blocks.append(Img(path, f"S_{phase.upper()} vs N_KV"))
    mem = memory_plot(series, out)
    if mem:
        blocks.append(Img(mem, "memory vs N_KV"))
    return blocks


def _selector_keys(selector) -> set[str]:
    text = str(selector).strip()
    if "=" not in text or text.isdigit():
        return set()
    return {canonical_name(part.split("=", 1)[0].strip()) for part in text.split(",") if "=" in part}


def _select(selector, series: list[Series], runs: dict[int, dict]) -> list[Series]:
    text = str(selector).strip()
    if text.isdigit():
        chosen = [s for s in series if s.run_id == int(text)]
    elif "=" in text:
        want = {canonical_name(k.strip()): v.strip()
                for k, v in (part.split("=", 1) for part in text.split(",") if "=" in part)}
        chosen = [s for s in series if all(_spelled(attrs(s).get(k)) == v for k, v in want.items())]
    else:
        chosen = [s for s in series if s.run_label == text]
    if not chosen:
        raise ReportError(f"selector {text!r} matches no series (use a run id, a run label, build=NAME, "
                          f"or setting=value[,...])")
    return chosen


def _spelled(value) -> str:
    """Settings as a user types them: true/false for flags."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _auto_ab(series: list[Series], runs: dict[int, dict]) -> tuple[str, str] | None:
    """Default A/B: two runs (first is baseline); or, in one run, the setting with two values
    (one of them off/false, the baseline, when several settings vary: the others split it)."""
    if len(runs) == 2:
        a, b = sorted(runs)
        return str(a), str(b)
    if len(runs) != 1:
        return None
    two = {}
    for k in varying_settings(series):
        values = sorted({_spelled(s.settings.get(k)) for s in series})
        if k != "model" and len(values) == 2:
            two[k] = values
    offs = [k for k, v in two.items() if "off" in v or "false" in v]
    key = offs[0] if len(offs) == 1 else next(iter(two)) if len(two) == 1 else None
    if key is None:
        return None
    values = two[key]
    for base in ("off", "false"):
        if base in values:
            values.remove(base)
            values.insert(0, base)
    return f"{key}={values[0]}", f"{key}={values[1]}"


def _ab_section(series, runs, baseline, compare_sel) -> list:
    if baseline is None:
        auto = _auto_ab(series, runs)
        if auto is None:
            return []
        baseline, compare_sel = auto
    a, b = _select(baseline, series, runs), _select(compare_sel, series, runs)
    ignore = _selector_keys(baseline) | _selector_keys(compare_sel)
    return [H(2, f"A/B: {compare_sel} vs {baseline}")] + _paired(a, b, ignore, f"A ({baseline})",
                                                                  f"B ({compare_sel})")


def _builds_section(series: list[Series]) -> list:
    """Every pair of builds of a run, compared like with like (settings, host, slot)."""
    blocks: list = []
    for rid in sorted({s.run_id for s in series}):
        members = [s for s in series if s.run_id == rid]
        names = list(dict.fromkeys(s.build for s in members if s.build))
        for i, base in enumerate(names):
            for other in names[i + 1:]:
                a = [s for s in members if s.build == base]
                b = [s for s in members if s.build == other]
                blocks.append(H(2, f"Builds (run {rid}): {other} vs {base}"))
                blocks += _paired(a, b, {"build"}, f"A ({base})", f"B ({other})")
    return blocks


def _paired(a: list[Series], b: list[Series], ignore: set[str], a_name: str, b_name: str) -> list:
    """The A/B tables: one comparison per combination both sides share (only true repetitions pool)."""
    pairs, vary = pair_sides(a, b, ignore)
    blocks: list = [P(f"A = {', '.join(s.label for s in a)}; B = {', '.join(s.label for s in b)}. "
                      f"Test: {TEST_NAME}; interval: 95% for B/A (delta method on log means).")]
    if not pairs:
        raise ReportError(f"{a_name} and {b_name} share no combination of {', '.join(vary)}: compare like with "
                          f"like (narrow the selectors, e.g. add {vary[0]}=...)" if vary else
                          f"{a_name} and {b_name} share nothing to compare")
    if vary:
        blocks.append(P(f"Split by {', '.join(vary)} (they vary within a side): one comparison each."))
    if any(s.simulated for s in a) != any(s.simulated for s in b):
        blocks.append(P("Warning: one side holds simulated-host rows and the other real rows."))
    for desc, ga, gb in pairs:
        if desc:
            blocks.append(H(3, desc))
        for phase in PHASES:
            rows = compare([p for s in ga for p in s.points], [p for s in gb for p in s.points], phase)
            blocks.append(P(verdict(rows, phase, "A", "B")))
            if not rows:
                continue
            table_rows = []
            for r in rows:
                p = "n/a (1 sample)" if r.a.n < 2 or r.b.n < 2 else ("n/a" if r.p_value is None else f"{r.p_value:.3g}")
                sig = "yes" if r.significant else "no" if r.p_value is not None else "—"
                ci = "—" if r.interval is None else f"{r.interval[0]:.3f}–{r.interval[1]:.3f}"
                table_rows.append((str(r.n_kv), r.a.fmt(), str(r.a.n), r.b.fmt(), str(r.b.n), f"{r.ratio:.3f}",
                                   ci, f"{(r.ratio - 1) * 100:+.1f}%", p, sig))
            blocks.append(Table((f"N_KV ({phase.upper()})", f"{a_name} t/s", "n", f"{b_name} t/s", "n", "B/A",
                                 "95% interval", "Δ", "p", "significant"), tuple(table_rows)))
    return blocks


def _versus_table(groups: dict[str, list[Series]], phase: str, title: str) -> list:
    """One column per group; each cell the group's samples at that N_KV (true repetitions) and n."""
    stats: dict[str, dict[int, Stat]] = {}
    for name, members in groups.items():
        pooled: dict[int, list[float]] = defaultdict(list)
        for s in members:
            for p in s.phase_points(phase):
                pooled[p["n_kv"]].append(p[f"speed_{phase}"])
        stats[name] = {n: Stat.of(v) for n, v in pooled.items()}
    n_kvs = sorted({n for st in stats.values() for n in st})
    if not n_kvs:
        return []
    names = list(groups)
    rows = []
    for n in n_kvs:
        cells = [f"{stats[name][n].fmt()} (n={stats[name][n].n})" if n in stats[name] else "—" for name in names]
        rows.append((str(n), *cells))
    return [H(4, f"{title}: S_{phase.upper()} t/s"), Table(("N_KV", *names), tuple(rows))]


def _versus(series: list[Series], key: str, heading: str) -> list:
    """``key``'s values side by side, once per combination of everything else that varies, so
    that a cell never pools different configurations."""
    def value(s):
        v = attrs(s).get(key)
        return "unknown" if v is None else _spelled(v)

    keys = {k for s in series for k in attrs(s)} - {key, "model"}
    others = sorted(k for k in keys if len({repr(attrs(s).get(k)) for s in series}) > 1)
    parts: dict[tuple, list[Series]] = defaultdict(list)
    for s in series:
        parts[tuple(attrs(s).get(k) for k in others)].append(s)
    blocks: list = []
    for part_key, members in parts.items():
        values = sorted({value(s) for s in members})
        if len(values) < 2:
            continue
        groups = {f"{key}={v}": [s for s in members if value(s) == v] for v in values}
        where = ", ".join(f"{k}={_spelled(x)}" for k, x in zip(others, part_key))
        if where:
            blocks.append(H(3, where))
        for phase in PHASES:
            blocks += _versus_table(groups, phase, key)
    return [H(2, heading)] + blocks if blocks else []


def _versus_sections(series: list[Series], by: str | None) -> list:
    blocks: list = []
    if by in (None, "host") and (len({s.host for s in series}) > 1 or by == "host"):
        blocks += _versus(series, "host", "Host vs host")
    if by in (None, "setting"):
        for key in [k for k in varying_settings(series) if k != "model"]:
            blocks += _versus(series, key, f"Setting vs setting: {key}")
    return blocks


def _host_bandwidth(host: dict | None, points: list[dict]) -> tuple[float, str] | None:
    """The memory bandwidth a series could use: local GB/s per node x nodes its memory is bound to."""
    if not host or not host.get("profile"):
        return None
    bw = (host["profile"].get("mem_bandwidth_gbs") or {}).get("local")
    if not bw:
        return None
    # The host's own nodes (a simulated host's planned ones; verified_mems holds this machine's,
    # as "policy:nodes", e.g. "bind:0-2").
    mems = {tuple((p.get("placement") or {}).get("mem_nodes") or ())
            or (p["verified_mems"].rpartition(":")[2],) for p in points if p.get("verified_mems")}
    if len(mems) == 1:
        from hostprofiles import parse_cpulist

        nodes = mems.pop()
        n_nodes = max(1, len(nodes) if isinstance(nodes[0], int) else len(parse_cpulist(nodes[0])))
        return bw * n_nodes, f"{bw:g} GB/s per node × {n_nodes} node(s) bound"
    return bw, f"{bw:g} GB/s (one node; memory binding not recorded)"


def _bandwidth_section(series: list[Series], runs: dict[int, dict], hosts: dict[int, dict]) -> list:
    blocks: list = []
    for s in series:
        wb = (next((p["weight_bytes"] for p in s.points if p.get("weight_bytes")), None)
              or s.settings.get("weight_bytes") or runs[s.run_id]["settings"].get("weight_bytes"))
        if not wb or not s.phase_points("tg"):
            continue
        host_ids = {p["host_id"] for p in s.points if p["host_id"] is not None}
        host_bw = _host_bandwidth(hosts.get(next(iter(host_ids))) if len(host_ids) == 1 else None, s.points)
        rows = []
        for n_kv, st in s.speed("tg").items():
            gbs = float(wb) * st.mean / 1e9
            pct = f"{gbs / host_bw[0] * 100:.0f}%" if host_bw else "—"
            rows.append((str(n_kv), st.fmt(), f"{gbs:.1f}", pct))
        if not blocks:
            blocks.append(H(2, "TG effective memory bandwidth"))
        note = host_bw[1] if host_bw else "host bandwidth unknown (no host profile with mem_bandwidth_gbs)"
        blocks.append(P(f"{s.label}: {float(wb) / 1e9:.3f} GB of weights read per token; host: {note}. "
                        "Weights only: KV-cache reads, which grow with N_KV, are not counted."))
        blocks.append(Table(("N_KV", "S_TG t/s", "GB/s", "of host"), tuple(rows)))
    return blocks


def _host_summary(host: dict) -> list:
    prof = host.get("profile") or {}
    d = prof.get("derived") or {}
    bw = prof.get("mem_bandwidth_gbs") or {}
    facts = [
        ("host", host.get("name") or host.get("fingerprint") or f"host {host['id']}"),
        ("fingerprint", host.get("fingerprint") or "—"),
        ("CPU", prof.get("cpu_model") or "—"),
        ("sockets / cores / threads", f"{d.get('sockets', '—')} / {d.get('cores', '—')} / {d.get('threads', '—')}"),
        ("NUMA mode", d.get("numa_mode") or "—"),
        ("memory bandwidth", f"{bw.get('local')} GB/s local, {bw.get('remote')} remote ({bw.get('kind')})" if bw else "—"),
        ("THP / numa_balancing", f"{prof.get('thp_enabled')} / {prof.get('numa_balancing')}"),
        ("governor", str(prof.get("governor"))),
        ("kernel", str(prof.get("kernel"))),
        ("simulated", "yes" if host.get("simulated") or prof.get("simulated") else "no"),
    ]
    blocks: list = [Table(("host fact", "value"), tuple((k, str(v)) for k, v in facts), right=False)]
    warnings = _tuning_warnings(prof)
    if warnings:
        blocks.append(P("Tuning warnings: " + "; ".join(warnings)))
    return blocks


def _tuning_warnings(profile: dict) -> list[str]:
    if not profile:
        return []
    try:
        import hostprofiles

        return [f.message for f in hostprofiles.check(hostprofiles.HostProfile.from_json(profile))]
    except Exception as exc:  # a profile from another numasweep version must not break the report
        return [f"could not check tuning ({type(exc).__name__}: {exc})"]


def _import_facts(run: dict) -> list:
    meta = run.get("meta") or {}
    rows = []
    for key in ("name", "arch", "model_type", "ftype", "params", "size", "n_ctx_train"):
        if key in (meta.get("model") or {}):
            rows.append((f"model {key}", str(meta["model"][key])))
    for key, value in (meta.get("host_state") or {}).items():
        rows.append((f"host state: {key}", str(value)))
    for key in ("cpu_info", "build_commit", "build_number", "format"):
        if key in meta:
            rows.append((key, str(meta[key])))
    if meta.get("skipped_tests"):
        rows.append(("skipped (pp+tg combined, not splittable)", ", ".join(meta["skipped_tests"])))
    blocks: list = [Table(("imported fact", "value"), tuple(rows), right=False)] if rows else []
    if meta.get("command"):
        blocks.append(Pre(meta["command"]))
    return blocks


def _run_section(run: dict, series: list[Series], hosts: dict[int, dict]) -> list:
    title = f"Run {run['id']}: {run.get('label') or ''}".rstrip(": ")
    info = (f"source {run['source']}, status {run['status']}, started {run['started_at']}"
            + (f", finished {run['finished_at']}" if run.get("finished_at") else "")
            + (f", numasweep {run['version']}" if run.get("version") else "")
            + (f", commit {run['git_commit']}" if run.get("git_commit") else ""))
    blocks: list = [H(2, title), P(info)]
    if run.get("note"):
        blocks.append(P(f"Note: {run['note']}"))
    if run["status"] != "ok":
        blocks.append(P(f"This run is {run['status']}: its numbers may be incomplete."))
    settings = ", ".join(f"{k}={v}" for k, v in sorted(run["settings"].items()))
    if settings:
        blocks.append(P(f"Settings: {settings}"))
    blocks += _import_facts(run)
    for hid in sorted({p["host_id"] for s in series for p in s.points if p["host_id"] is not None}):
        if hid in hosts:
            blocks += _host_summary(hosts[hid])
    for s in series:
        blocks += _sweep_table(s)
    return blocks


def _sweep_table(s: Series) -> list:
    """The sweep-bench table of one series, mean ± sd over repetitions."""
    pp_speed, tg_speed, pp_time, tg_time = s.speed("pp"), s.speed("tg"), s.time("pp"), s.time("tg")
    pp_size, tg_size = s.size("pp"), s.size("tg")
    n_kvs = sorted(set(pp_speed) | set(tg_speed))
    reps = max([st.n for st in (*pp_speed.values(), *tg_speed.values())], default=1)
    rows = []
    for n in n_kvs:
        def cell(d, digits):
            return d[n].fmt(digits) if n in d else "—"
        rows.append((str(pp_size if n in pp_speed and pp_size else "—"), str(tg_size if n in tg_speed and tg_size else "—"),
                     str(n), cell(pp_time, 3), cell(pp_speed, 2), cell(tg_time, 3), cell(tg_speed, 2)))
    where = ", ".join(x for x in (s.host, s.slot) if x)
    desc = f"Series {s.label}" + (f" on {where}" if where else "") + (
        f": mean ± sd over {reps} repetitions" if reps > 1 else ": one repetition")
    blocks: list = [H(3, desc)]
    from engine.noise import NOISE_WARN  # here: importing the report module loads no engine code

    noise = s.max_noise()
    if noise is not None and noise > NOISE_WARN:
        blocks.append(P(f"Noisy: other processes used up to {noise:.0%} of this slot's CPU time during some rows."))
    blocks.append(Table(sweep_table.COLUMNS, tuple(rows)))
    return blocks
