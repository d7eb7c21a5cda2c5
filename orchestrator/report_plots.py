"""Report plots (matplotlib, Agg, PNG): t/s vs N_KV per phase, and memory vs N_KV."""
from __future__ import annotations

from pathlib import Path

from orchestrator.report_data import Series

PLOT_NAMES = {"pp": "performance_comparison_pp.png", "tg": "performance_comparison_tg.png"}
PHASE_TITLES = {"pp": "Prompt processing (PP)", "tg": "Token generation (TG)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


MAX_LEGEND = 24  # beyond this a legend hides the plot; the tables name every series


def _finish(fig, ax, path: Path, n_lines: int) -> Path:
    ax.grid(True, alpha=0.3)
    if n_lines > MAX_LEGEND:
        ax.text(0.99, 0.99, f"{n_lines} lines; legend omitted (see the tables)", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="#555")
    elif n_lines:
        # Many series: legend below the axes so it never hides the lines.
        longest = max((len(label) for label in ax.get_legend_handles_labels()[1]), default=0)
        if n_lines > 6 or longest > 45:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1 if longest > 45 else 2,
                      frameon=False)
        else:
            ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps a legend placed below the axes
    _pyplot().close(fig)
    return path


def speed_plot(series: list[Series], phase: str, out_dir: Path) -> Path | None:
    drawn = [s for s in series if s.phase_points(phase)]
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5 if len(drawn) <= 6 or len(drawn) > MAX_LEGEND else 7))
    thin = len(drawn) > MAX_LEGEND
    sizes_differ = len({d.size(phase) for d in drawn}) > 1
    for s in drawn:
        stats = s.speed(phase)
        xs = list(stats)
        ys = [stats[x].mean for x in xs]
        errs = [stats[x].sd or 0.0 for x in xs]
        size = s.size(phase)
        suffix = f" ({phase}{size})" if size and sizes_differ else ""
        if thin:  # hundreds of series: plain thin lines, no markers or error bars
            ax.plot(xs, ys, linewidth=0.6, alpha=0.6)
            continue
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", markersize=3, linewidth=1.4,
                    capsize=2.5, label=s.label + suffix)
    ax.set_xlabel("N_KV (tokens already in the KV cache)")
    ax.set_ylabel(f"S_{phase.upper()} (tokens/s)")
    reps = max(max((st.n for st in s.speed(phase).values()), default=1) for s in drawn)
    note = f"error bars: ±1 sd over repetitions (up to {reps})" if reps > 1 else "single repetition: no error bars"
    ax.set_title(f"{PHASE_TITLES[phase]} speed vs context depth\n{note}", fontsize=11)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, out_dir / PLOT_NAMES[phase], len(drawn))


def memory_plot(series: list[Series], out_dir: Path) -> Path | None:
    """RSS high-water mark and K-repack scratch vs N_KV, when any point recorded them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    lines = 0
    for s in series:
        color = None  # one colour per series: solid RSS, dashed scratch
        for key, style, what in (("rss_hwm_mib", "-", "RSS HWM"), ("repack_scratch_mib", "--", "repack scratch")):
            pts = sorted((p["n_kv"], p[key]) for p in s.points if p.get(key) is not None)
            if not pts:
                continue
            by: dict[int, list[float]] = {}
            for x, y in pts:
                by.setdefault(x, []).append(y)
            xs = list(by)
            (line,) = ax.plot(xs, [max(by[x]) for x in xs], style, marker=".", color=color, label=f"{s.label} — {what}")
            color = line.get_color()
            lines += 1
    if not lines:
        plt.close(fig)
        return None
    ax.set_xlabel("N_KV (tokens already in the KV cache)")
    ax.set_ylabel("MiB")
    ax.set_title("Memory vs context depth (max over repetitions)", fontsize=11)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, out_dir / "memory.png", lines)
