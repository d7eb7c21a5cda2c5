"""``numasweep export``: stored points as CSV, JSONL (sweep-bench keys) or a Markdown table."""
from __future__ import annotations

import csv
import io
import json

from orchestrator.errors import StoreError
from orchestrator.store import Store

FORMATS = ("csv", "jsonl", "md")
# sweep-bench JSONL measurement keys first, then where the point came from.
SWEEP_KEYS = ("n_kv", "pp", "tg", "t_pp", "speed_pp", "t_tg", "speed_tg", "rss_hwm_mib", "repack_scratch_mib", "rep")
ORIGIN_KEYS = ("run_id", "label", "host", "slot", "verified_cpus", "verified_mems", "noise", "simulated", "settings_key")


def export_rows(store: Store, run_id: int | None = None) -> list[dict]:
    if run_id is not None:
        store.run(run_id)  # raises naming the store if there is no such run
    out = []
    for p in store.points(run_id):
        row = {k: p[k] for k in SWEEP_KEYS}
        row.update(run_id=p["run_id"], label=p["label"], host=p["host_name"] or p["host_fingerprint"],
                   slot=p["slot"], verified_cpus=p["verified_cpus"], verified_mems=p["verified_mems"],
                   noise=p["noise"], simulated=p["simulated"], settings_key=p["settings_key"],
                   settings=p["settings"], placement=p["placement"])
        out.append(row)
    return out


def export_text(store: Store, fmt: str, run_id: int | None = None) -> str:
    if fmt not in FORMATS:
        raise StoreError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rows = export_rows(store, run_id)
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        cols = [*SWEEP_KEYS, *ORIGIN_KEYS, "settings", "placement"]
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "settings": json.dumps(r["settings"], sort_keys=True),
                             "placement": "" if r["placement"] is None else json.dumps(r["placement"], sort_keys=True)})
        return buf.getvalue()
    return _markdown(rows)


def _markdown(rows: list[dict]) -> str:
    head = ("run", "label", "host", "slot", "rep", "PP", "TG", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 8) + "|"]
    for r in rows:
        pp, tg = r["pp"] > 0, r["tg"] > 0  # a llama-bench test measures one phase: show the other as absent
        cells = (r["run_id"], r["label"] or "", r["host"] or "", r["slot"] or "", r["rep"], r["pp"], r["tg"],
                 r["n_kv"], f"{r['t_pp']:.3f}" if pp else "—", f"{r['speed_pp']:.2f}" if pp else "—",
                 f"{r['t_tg']:.3f}" if tg else "—", f"{r['speed_tg']:.2f}" if tg else "—")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
