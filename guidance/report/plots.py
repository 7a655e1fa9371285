"""Tradeoff plots (matplotlib Agg, PNG): FID vs scale, precision vs recall, IS vs FID frontier, sample grids.

A *series* is one curve of a scale sweep, as the strategy describes it (guidance.guiders: describe): e.g.
classifier guidance on the conditional and on the unconditional model are separate curves, as in ADM Fig. 4,
and cfg_classifier gets one curve per w with s on the x axis. Unguided points (strategy "none") are baselines: a
dashed line or a star.
Points without the plotted metric are left out of that plot; the tables list them with their status.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from guidance.io import atomic_write_bytes  # noqa: E402
from guidance.report.collect import MODEL_ORDER, Point, Sweep, is_finite  # noqa: E402

PLOTS = ("fid_vs_scale", "precision_recall", "is_vs_fid", "grids", "accuracy_recall", "fid_vs_nfe")


def series_key(p: Point, by_sampler: bool = False) -> str:
    key = p.desc.series if p.desc else f"{p.strategy or '?'} ({p.model})"
    return f"{key}, {p.info.get('sampler_label') or p.sampler} {p.steps}" if by_sampler else key


def x_of(p: Point) -> float | None:
    """The swept scale in its paper's unit (s for classifier guidance, w for CFG, ...), as the strategy says."""
    return p.x


def _order(p: Point) -> int:
    return -1 if p.baseline else (p.desc.table.order if p.desc else 99)


def group_series(points: list[Point]) -> dict[str, list[Point]]:
    """Series in table order (baselines first, then each strategy's table order; unconditional first), points by
    scale."""
    series: dict[str, list[Point]] = {}
    by_sampler = len({(p.info.get("sampler_label") or p.sampler, p.steps) for p in points if p.sampler}) > 1
    for p in points:
        series.setdefault(series_key(p, by_sampler), []).append(p)
    for pts in series.values():
        pts.sort(key=lambda p: (x_of(p) is None, x_of(p) or 0.0))
    order = lambda item: (_order(item[1][0]), MODEL_ORDER[item[1][0].conditional], item[0])
    return dict(sorted(series.items(), key=order))


def x_label(points: list[Point]) -> str:
    symbols = sorted({f"{p.desc.x_symbol} for {p.strategy}" for p in points if p.desc and not p.baseline})
    return "guidance scale" + (f" ({', '.join(symbols)})" if symbols else "")


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(buf.getvalue(), path)


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _with(points, *metrics):
    return [p for p in points if all(is_finite(p.value(m)) for m in metrics)]


def plot_fid_vs_scale(sweep: Sweep, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for key, pts in group_series(sweep.points).items():
        pts = [p for p in _with(pts, "fid") if x_of(p) is not None]
        if not pts:
            continue
        y = [p.value("fid") for p in pts]
        err = [p.spread("fid") or 0.0 for p in pts]
        if pts[0].baseline:  # unguided baseline: one number, drawn across the axis
            ax.axhline(y[0], ls="--", lw=1, color="gray" if pts[0].conditional else "black", label=f"{key}: {y[0]:.2f}")
        else:
            ax.errorbar([x_of(p) for p in pts], y, yerr=err, marker="o", capsize=3, label=key)
        drawn = True
    if not drawn:
        _empty(ax, "no points with FID")
    ax.set_xlabel(x_label(sweep.points))
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"FID vs guidance scale — {sweep.name}")
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _against_recall(sweep: Sweep, path: Path, metric: str, ylabel: str, title: str, empty: str) -> Path:
    """One curve per series of `metric` vs recall, each point annotated with its scale."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn = False
    for key, pts in group_series(sweep.points).items():
        pts = _with(pts, metric, "recall")
        if not pts:
            continue
        style = dict(marker="*", ms=12, ls="none") if pts[0].baseline else dict(marker="o")
        ax.plot([p.value("recall") for p in pts], [p.value(metric) for p in pts], label=key, **style)
        for p in pts:  # the scale at each point: the curve's direction is the whole story
            ax.annotate(f"{x_of(p):g}" if x_of(p) is not None else "?", (p.value("recall"), p.value(metric)),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        _empty(ax, empty)
    ax.set_xlabel("recall (diversity)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}, scale annotated — {sweep.name}")
    return _save(fig, path)


def plot_precision_recall(sweep: Sweep, path: Path) -> Path:
    return _against_recall(sweep, path, "precision", "precision (fidelity)", "Precision vs recall",
                           "no points with precision and recall")


def plot_accuracy_recall(sweep: Sweep, path: Path) -> Path:
    """Class accuracy of the samples under the dataset evaluator (what guidance buys) vs recall (what it costs)."""
    return _against_recall(sweep, path, "class_acc", "class accuracy under the dataset evaluator",
                           "Class accuracy vs recall",
                           "no points with class accuracy (metrics=evaluator, labelled samples)")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(fid, is) pairs not dominated by another (lower FID and higher IS), sorted by FID."""
    front, best_is = [], -np.inf
    for fid, is_ in sorted(points, key=lambda q: (q[0], -q[1])):
        if is_ > best_is:
            front.append((fid, is_))
            best_is = is_
    return front


def plot_is_vs_fid(sweep: Sweep, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    everything = []
    for key, pts in group_series(sweep.points).items():
        pts = _with(pts, "fid", "is")
        if not pts:
            continue
        f, i = [p.value("fid") for p in pts], [p.value("is") for p in pts]
        style = dict(marker="*", ms=12, ls="none") if pts[0].baseline else dict(marker="o")
        ax.errorbar(f, i, xerr=[p.spread("fid") or 0 for p in pts], yerr=[p.spread("is") or 0 for p in pts],
                    label=key, capsize=2, **style)
        everything += list(zip(f, i))
    if everything:
        front = pareto_front(everything)
        ax.plot(*zip(*front), color="black", lw=2, alpha=0.3, drawstyle="steps-post", label="frontier")
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no points with FID and IS")
    ax.set_xlabel("FID (lower is better)")
    ax.set_ylabel("IS (higher is better)")
    ax.set_title(f"IS vs FID — {sweep.name}")
    return _save(fig, path)


def plot_fid_vs_nfe(sweep: Sweep, path: Path) -> Path:
    """FID against the network evaluations each sample cost (counted while sampling), one marker set per curve,
    and the frontier of points no other point beats on both (the strategies worth their cost)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    everything = []
    markers = "osD^v<>phX"  # with matplotlib's 10 colours: 100 curves before a (colour, marker) pair repeats
    for n, (key, pts) in enumerate(group_series(sweep.points).items()):
        pts = [p for p in _with(pts, "fid") if is_finite(p.nfe)]
        if not pts:
            continue
        style = dict(marker="*", ms=12) if pts[0].baseline else dict(marker=markers[(n // 10) % len(markers)],
                                                                      alpha=0.8)
        ax.errorbar([p.nfe for p in pts], [p.value("fid") for p in pts], yerr=[p.spread("fid") or 0 for p in pts],
                    ls="none", capsize=2, label=key, **style)
        everything += [(p.nfe, p.value("fid")) for p in pts]
    if everything:
        front, best = [], np.inf
        for nfe, fid in sorted(everything):
            if fid < best:
                front.append((nfe, fid))
                best = fid
        ax.plot(*zip(*front), color="black", lw=2, alpha=0.3, drawstyle="steps-post", label="frontier")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fids = [f for _, f in everything if f > 0]
        if fids and max(fids) / min(fids) > 20:  # one broken curve must not flatten every other point
            ax.set_yscale("log")
    else:
        _empty(ax, "no points with FID and a counted cost")
    ax.set_xlabel("network evaluations per sample (counted)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"FID vs cost — {sweep.name}")
    return _save(fig, path)


def plot_grids(sweep: Sweep, path: Path) -> Path:
    """Rows = series, columns = scale; each cell the point's grid.png (same per-image seeds across a row)."""
    series = group_series([p for p in sweep.points if p.grid is not None])
    xs = sorted({x_of(p) for pts in series.values() for p in pts if x_of(p) is not None})
    if not series or not xs:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        _empty(ax, "no grid.png in the sweep")
        return _save(fig, path)
    nr, nc = len(series), len(xs)
    fig, axes = plt.subplots(nr, nc, figsize=(2.2 * nc + 1, 2.2 * nr + 0.6), squeeze=False)
    with Image.open(next(iter(series.values()))[0].grid) as im:
        aspect = im.height / im.width  # empty cells get the same box, so columns stay aligned
    seeds = set()
    for r, (key, pts) in enumerate(series.items()):
        by_x = {x_of(p): p for p in pts}
        for c, x in enumerate(xs):
            ax = axes[r, c]
            ax.set_box_aspect(aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if r == 0:
                ax.set_title(f"scale {x:g}", fontsize=9)
            if c == 0:
                ax.set_ylabel(key, fontsize=8)
            p = by_x.get(x)
            if p is None:
                continue
            with Image.open(p.grid) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
            seeds.add(p.seed)
    # Paired comparison only holds with one seed (sampling draws image i's noise from (seed, i)); say so if not.
    seed_text = f"seed {seeds.pop()}" if len(seeds) == 1 else f"WARNING: different seeds {sorted(map(str, seeds))}"
    fig.suptitle(f"Samples across guidance scales — {sweep.name} ({seed_text})", fontsize=10)
    return _save(fig, path)


def make_plots(sweep: Sweep, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "fid_vs_scale": plot_fid_vs_scale(sweep, out_dir / "fid_vs_scale.png"),
        "precision_recall": plot_precision_recall(sweep, out_dir / "precision_recall.png"),
        "is_vs_fid": plot_is_vs_fid(sweep, out_dir / "is_vs_fid.png"),
        "grids": plot_grids(sweep, out_dir / "grids.png"),
        "accuracy_recall": plot_accuracy_recall(sweep, out_dir / "accuracy_recall.png"),
        "fid_vs_nfe": plot_fid_vs_nfe(sweep, out_dir / "fid_vs_nfe.png"),
    }
