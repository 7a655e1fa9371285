"""Tradeoff plots (matplotlib Agg, PNG): FID vs scale, precision vs recall, IS vs FID frontier, FID vs cost, every
table metric vs scale, sample grids.

A *series* is one curve of a scale sweep, as the strategy describes it (guidance.description: Description): e.g.
classifier guidance on the conditional and on the unconditional model are separate curves, as in ADM Fig. 4,
and cfg_classifier gets one curve per w with s on the x axis. Unguided points (strategy "none") are baselines: a
dashed line or a star. Every curve keeps one colour and one marker in every figure (a sweep of 14+ curves
repeats neither pair), legends sit outside the axes, and bootstrap spreads are error bars.
Points without the plotted metric are left out of that plot; the tables list them with their status.
"""

from __future__ import annotations

import io
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from guidance.io import atomic_write_bytes  # noqa: E402
from guidance.metrics.registry import METRICS  # noqa: E402
from guidance.report.collect import MODEL_ORDER, Point, Sweep, is_finite  # noqa: E402

PLOTS = ("fid_vs_scale", "precision_recall", "is_vs_fid", "grids", "accuracy_recall", "fid_vs_nfe",
         "metrics_vs_scale")


def series_key(p: Point) -> str:
    return p.desc.series if p.desc else f"{p.strategy or '?'} ({p.model})"


def _sampler(p: Point) -> str:
    return f"{p.info.get('sampler_label') or p.sampler} {p.steps}"


def x_of(p: Point) -> float | None:
    """The swept scale in its paper's unit (s for classifier guidance, w for CFG, ...), as the strategy says."""
    return p.x


def _order(p: Point) -> int:
    return -1 if p.baseline else (p.desc.table.order if p.desc else 99)


def group_series(points: list[Point]) -> dict[str, list[Point]]:
    """Series in table order (baselines first, then each strategy's table order; unconditional first), points by
    scale. A curve run with several samplers splits into one per sampler, and one run with another sampler than
    most points says which: "cfg++, ddim eta=0 20"."""
    samplers = Counter(_sampler(p) for p in points if p.sampler)
    common = samplers.most_common(1)[0][0] if samplers else None
    by_key: dict[str, list[Point]] = {}
    for p in points:
        by_key.setdefault(series_key(p), []).append(p)
    series: dict[str, list[Point]] = {}
    for key, pts in by_key.items():
        mixed = len({_sampler(p) for p in pts if p.sampler}) > 1
        for p in pts:
            named = p.sampler and (mixed or _sampler(p) != common)
            series.setdefault(f"{key}, {_sampler(p)}" if named else key, []).append(p)
    for pts in series.values():
        pts.sort(key=lambda p: (x_of(p) is None, x_of(p) or 0.0))
    order = lambda item: (_order(item[1][0]), MODEL_ORDER[item[1][0].conditional], item[0])
    return dict(sorted(series.items(), key=order))


def shown_metrics(points: list[Point]) -> list[str]:
    """The registry's table metrics (column "always"/"measured") that some point measured, in registry order."""
    return [m for m, spec in METRICS.items()
            if spec.column != "csv" and any(is_finite(p.value(m)) for p in points)]


def axis_label(metric: str) -> str:
    m = METRICS[metric]
    return f"{m.label} ({m.better} is better)"


# Colours: tab20's dark shades, then its light ones, without its greys (the baselines' colour): 18 distinct;
# markers on a 7-cycle, so (colour, marker) pairs never repeat within 126 curves and legend neighbours differ in both.
_COLOURS = [plt.get_cmap("tab20")(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2)) if i not in (14, 15)]
_MARKERS = "osD^vP<"


def styles(sweep: Sweep) -> dict[str, dict]:
    """series -> matplotlib style, fixed over the sweep so a curve looks the same in every figure."""
    out, n = {}, 0
    series = group_series(sweep.points)
    per_model = Counter(pts[0].conditional for pts in series.values() if pts[0].baseline)
    shade = Counter()
    for key, pts in series.items():
        if pts[0].baseline:  # unguided: a star, black for the unconditional model, grey for the conditional one;
            model = pts[0].conditional  # a model unguided with several samplers: one colour per sampler
            colour = "0.45" if model else "black"
            if per_model[model] > 1:
                colour = _COLOURS[-1 - shade[model] % len(_COLOURS)]
                shade[model] += 1
            out[key] = dict(color=colour, marker="*", ms=11)
        else:
            out[key] = dict(color=_COLOURS[n % len(_COLOURS)], marker=_MARKERS[n % len(_MARKERS)], ms=6)
            n += 1
    return out


def _label(key: str, pts: list[Point]) -> str:
    """Legend entry: a one-point curve says its scale (nothing on the axes would)."""
    if len(pts) == 1 and not pts[0].baseline and pts[0].desc and x_of(pts[0]) is not None:
        return f"{key} ({pts[0].desc.x_symbol} = {x_of(pts[0]):g})"
    return key


def x_label(points: list[Point]) -> str:
    symbols = sorted({f"{p.desc.x_symbol} for {p.strategy}" for p in points if p.desc and not p.baseline})
    text = "guidance scale" + (f" ({', '.join(symbols)})" if symbols else "")
    return "\n".join(textwrap.wrap(text, 90))


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(buf.getvalue(), path)


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _legend(ax_or_fig, **kw):
    """Outside the axes, on the right: never on the data."""
    handles, labels = ax_or_fig.get_legend_handles_labels()
    if handles:
        ax_or_fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                         borderaxespad=0.0, **kw)


def _with(points, *metrics):
    return [p for p in points if all(is_finite(p.value(m)) for m in metrics)]


def _spreads(pts, metric):
    return [p.spread(metric) or 0.0 for p in pts]


def _vs_scale(ax, sweep: Sweep, metric: str, style: dict[str, dict], label: bool = True, values: bool = True) -> bool:
    """`metric` against the scale, one curve per series with its spread; baselines as horizontal lines (their value
    in the legend when `values`)."""
    drawn = False
    for key, pts in group_series(sweep.points).items():
        pts = [p for p in _with(pts, metric) if x_of(p) is not None]
        if not pts:
            continue
        y = [p.value(metric) for p in pts]
        st = style[key]
        if pts[0].baseline:  # unguided baseline: one number, drawn across the axis
            ax.axhline(y[0], ls="--", lw=1, color=st["color"],
                       label=(f"{key}: {y[0]:.{METRICS[metric].decimals}f}" if values else key) if label else None)
        else:
            ax.errorbar([x_of(p) for p in pts], y, yerr=_spreads(pts, metric), capsize=3, lw=1.2, color=st["color"],
                        marker=st["marker"], ms=st["ms"], label=_label(key, pts) if label else None)
        drawn = True
    return drawn


def plot_fid_vs_scale(sweep: Sweep, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = _vs_scale(ax, sweep, "fid", styles(sweep))
    if drawn:
        _legend(ax)
    else:
        _empty(ax, "no points with FID")
    ax.set_xlabel(x_label(sweep.points))
    ax.set_ylabel(axis_label("fid"))
    ax.set_title(f"FID vs guidance scale — {sweep.name}")
    return _save(fig, path)


def plot_metrics_vs_scale(sweep: Sweep, path: Path) -> Path:
    """One panel per metric the tables show (the registry's "always"/"measured" columns) that the sweep measured."""
    metrics = shown_metrics(sweep.points)
    if not metrics:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        _empty(ax, "no metrics in the sweep")
        return _save(fig, path)
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    style = styles(sweep)
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics)):
        _vs_scale(ax, sweep, metric, style, label=i == 0, values=False)
        ax.set_ylabel(axis_label(metric), fontsize=9)
        ax.set_xlabel("guidance scale (each strategy's unit)", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize=7)
    fig.suptitle(f"Every table metric vs guidance scale — {sweep.name}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _against_recall(sweep: Sweep, path: Path, metric: str, title: str, empty: str) -> Path:
    """One curve per series of `metric` vs recall with both spreads as error bars; multi-point curves have each
    point annotated with its scale (the curve's direction is the whole story)."""
    fig, ax = plt.subplots(figsize=(6.2, 5))
    style, drawn = styles(sweep), False
    for key, pts in group_series(sweep.points).items():
        pts = _with(pts, metric, "recall")
        if not pts:
            continue
        st = style[key]
        ax.errorbar([p.value("recall") for p in pts], [p.value(metric) for p in pts], xerr=_spreads(pts, "recall"),
                    yerr=_spreads(pts, metric), capsize=2, elinewidth=0.8, lw=1.0,
                    ls="none" if pts[0].baseline else "-",
                    color=st["color"], marker=st["marker"], ms=st["ms"], label=_label(key, pts))
        if len(pts) > 1:
            for p in pts:
                ax.annotate(f"{x_of(p):g}" if x_of(p) is not None else "?", (p.value("recall"), p.value(metric)),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=st["color"])
        drawn = True
    if drawn:
        _legend(ax)
    else:
        _empty(ax, empty)
    ax.set_xlabel(axis_label("recall") + ": diversity")
    ax.set_ylabel(axis_label(metric))
    ax.set_title(f"{title} (curves: scale annotated) — {sweep.name}", fontsize=10)
    return _save(fig, path)


def plot_precision_recall(sweep: Sweep, path: Path) -> Path:
    return _against_recall(sweep, path, "precision", "Precision vs recall", "no points with precision and recall")


def plot_accuracy_recall(sweep: Sweep, path: Path) -> Path:
    """Class accuracy of the samples under the dataset evaluator (what guidance buys) vs recall (what it costs)."""
    return _against_recall(sweep, path, "class_acc", "Class accuracy vs recall",
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
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    style, everything = styles(sweep), []
    for key, pts in group_series(sweep.points).items():
        pts = _with(pts, "fid", "is")
        if not pts:
            continue
        f, i = [p.value("fid") for p in pts], [p.value("is") for p in pts]
        st = style[key]
        ax.errorbar(f, i, xerr=_spreads(pts, "fid"), yerr=_spreads(pts, "is"), capsize=2, elinewidth=0.8, lw=1.0,
                    ls="none" if pts[0].baseline else "-", color=st["color"], marker=st["marker"], ms=st["ms"],
                    label=_label(key, pts))
        everything += list(zip(f, i))
    if everything:
        front = pareto_front(everything)
        ax.plot(*zip(*front), color="black", lw=2, alpha=0.3, drawstyle="steps-post", label="frontier")
        _legend(ax)
    else:
        _empty(ax, "no points with FID and IS")
    ax.set_xlabel(axis_label("fid"))
    ax.set_ylabel(axis_label("is"))
    ax.set_title(f"IS vs FID — {sweep.name}")
    return _save(fig, path)


def cost_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, fid) points no cheaper-or-equal point beats: the lowest FID at or below each cost, by cost."""
    front, best = [], np.inf
    for c, fid in sorted(points):
        if fid < best:
            front.append((c, fid))
            best = fid
    return front


def plot_fid_vs_nfe(sweep: Sweep, path: Path) -> Path:
    """FID against what each sample cost, one marker set per curve, and the frontier (the lowest FID at or below
    each cost: the strategies worth their cost). The cost is GFLOP/sample (Σ rows × measured FLOPs of each network
    pass) when every point records it; records made before FLOPs were counted fall back to the counted network
    evaluations (NFE), and the axis label says so."""
    fig, ax = plt.subplots(figsize=(7, 5))
    style, everything = styles(sweep), []
    with_fid = [p for p in _with(sweep.points, "fid") if is_finite(p.nfe)]
    flops = all(is_finite(p.gflop) for p in with_fid)  # (an empty plot is labelled in GFLOP)
    cost = (lambda p: p.gflop) if flops else (lambda p: p.nfe)
    for key, pts in group_series(sweep.points).items():
        pts = [p for p in _with(pts, "fid") if is_finite(p.nfe)]
        if not pts:
            continue
        st = style[key]
        ax.errorbar([cost(p) for p in pts], [p.value("fid") for p in pts], yerr=_spreads(pts, "fid"), ls="none",
                    capsize=2, alpha=0.85, color=st["color"], marker=st["marker"], ms=st["ms"], label=_label(key, pts))
        everything += [(cost(p), p.value("fid")) for p in pts]
    if everything:
        front = cost_front(everything)
        front.append((max(c for c, _ in everything), front[-1][1]))  # drawn to the costliest point: a step line
        ax.plot(*zip(*front), color="black", lw=2, alpha=0.3, drawstyle="steps-post", label="frontier")
        _legend(ax)
        fids = [f for _, f in everything if f > 0]
        if fids and max(fids) / min(fids) > 20:  # one broken curve must not flatten every other point
            ax.set_yscale("log")
    else:
        _empty(ax, "no points with FID and a counted cost")
    ax.set_xlabel("GFLOP per sample (measured per network pass)" if flops else
                  "network evaluations per sample (counted; these records predate FLOP counting)")
    ax.set_ylabel(axis_label("fid"))
    ax.set_title(f"FID vs cost — {sweep.name}")
    return _save(fig, path)


# ---- sample grids ----

_CELLS = {True: (1.55, 8), False: (2.5, 5)}  # squarish grid.png: (inches per cell, cells per line); flat: wider
_HGAP, _STRIP_GAP = 0.08, 0.35


def _best_fid(pts: list[Point]) -> Point:
    with_fid = _with(pts, "fid")
    return min(with_fid, key=lambda p: p.value("fid")) if with_fid else pts[0]


def _scale_text(p: Point, unguided: str = "unguided") -> str:
    if p.baseline or p.desc is None or x_of(p) is None:
        text = unguided if p.baseline else "scale ?"
    else:
        text = f"{p.desc.x_symbol} = {x_of(p):g}"
    return text + (f", FID {p.value('fid'):.2f}" if is_finite(p.value("fid")) else "")


def _grid_sections(sweep: Sweep) -> list[tuple[str, list[tuple[str, list[tuple[Point, str]]]]]]:
    """[(heading, [(strip title, [(point, cell label)])])]: every curve at its best-FID scale (one strip), then one
    strip per curve of several scales, headed by its model's unguided point (same seeds throughout)."""
    series = group_series([p for p in sweep.points if p.grid is not None])
    best = [(p, f"{key}\n{_scale_text(p)}")
            for key, pts in series.items() for p in [_best_fid(pts)]]
    unguided = {p.model: p for pts in series.values() for p in pts if p.baseline}
    strips = []
    for key, pts in series.items():
        if len(pts) < 2 or pts[0].baseline:
            continue
        head = [] if any(p.desc and p.desc.unguided for p in pts) or pts[0].model not in unguided else \
            [(unguided[pts[0].model], _scale_text(unguided[pts[0].model], f"unguided {pts[0].model}"))]
        strips.append((key, head + [(p, _scale_text(p)) for p in pts]))
    sections = [("Every curve at its lowest-FID scale", [("", best)])]
    if strips:
        sections.append(("Each curve over its scales", strips))
    return sections


def plot_grids(sweep: Sweep, path: Path) -> Path:
    """The points' grid.png files (the same per-image seeds everywhere, so cells compare image by image): first
    every curve at its best-FID scale, then each multi-scale curve on its own strip. Strips wrap at a line's cells
    and never leave a cell empty; labels sit under their cell, wrapped to its width."""
    sections = _grid_sections(sweep)
    if not sections[0][1][0][1]:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        _empty(ax, "no grid.png in the sweep")
        return _save(fig, path)
    with Image.open(sections[0][1][0][1][0][0].grid) as im:
        aspect = im.height / im.width
    cell_w, cols = _CELLS[aspect >= 0.5]
    cell_h = cell_w * aspect
    width = cols * (cell_w + _HGAP) + _STRIP_GAP  # a line of strips holds `cols` cells and one gap
    fit = lambda text: "\n".join(w for line in text.split("\n") for w in textwrap.wrap(line, int(cell_w * 16)))
    sections = [(h, [(title, [(p, fit(label)) for p, label in cells]) for title, cells in strips])
                for h, strips in sections]
    ops, y = [], 0.55  # (kind, x, y, ...) in inches, y downwards
    for heading, strips in sections:
        ops.append(("heading", 0.0, y, heading))
        y += 0.3
        lines = max(text.count("\n") + 1 for _, cells in strips for _, text in cells)
        title_h = 0.3 if any(title for title, _ in strips) else 0.0
        row_h = title_h + cell_h + 0.13 * lines + 0.1  # every line of the section: title, images, labels
        x = 0.0
        for title, cells in strips:
            for start in range(0, len(cells), cols):  # a strip longer than a line wraps onto its own lines
                chunk = cells[start:start + cols]
                need = len(chunk) * (cell_w + _HGAP)
                if x > 0 and x + need > width + 1e-9:
                    x, y = 0.0, y + row_h + 0.1
                if title:
                    text = title + (" (continued)" if start else "")
                    ops.append(("title", x, y, "\n".join(textwrap.wrap(text, int(need * 11))[:2])))
                ops += [("cell", x + i * (cell_w + _HGAP), y + title_h, p, label) for i, (p, label) in enumerate(chunk)]
                x += need + _STRIP_GAP
        y += row_h + 0.3
    fig = plt.figure(figsize=(width, y))
    seeds = set()
    for op in ops:
        if op[0] == "heading":
            fig.text(op[1] / width, 1 - op[2] / y, op[3], fontsize=11, weight="bold", va="top")
        elif op[0] == "title":
            fig.text(op[1] / width, 1 - op[2] / y, op[3], fontsize=8, weight="bold", va="top")
        else:
            _, cx, cy, p, text = op
            ax = fig.add_axes([cx / width, 1 - (cy + cell_h) / y, cell_w / width, cell_h / y])
            with Image.open(p.grid) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
            ax.axis("off")
            ax.text(0.5, -0.02, text, transform=ax.transAxes, ha="center", va="top", fontsize=7)
            seeds.add(p.seed)
    # Paired comparison only holds with one seed (sampling draws image i's noise from (seed, i)); say so if not.
    seed_text = f"seed {seeds.pop()}" if len(seeds) == 1 else f"WARNING: different seeds {sorted(map(str, seeds))}"
    fig.text(0.0, 1 - 0.1 / y, f"Samples, same per-image seeds in every cell — {sweep.name} ({seed_text})",
             fontsize=12, va="top")
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
        "metrics_vs_scale": plot_metrics_vs_scale(sweep, out_dir / "metrics_vs_scale.png"),
    }
