"""Tradeoff tables in the papers' layouts, written as Markdown, CSV and LaTeX (booktabs).

Each guidance strategy describes its own table (a guidance.description.TableSpec, from the describe function the
caller passed to collect_sweep): its title, key columns, cost columns and which unguided baselines head it, e.g.
ADM Table 4 (Dhariwal & Nichol 2021: model x guidance x s, both models) or Ho & Salimans 2022 Table 1 (one row per
w, the conditional model's unguided point as w = 0).
A table is emitted when the sweep has a guided point of it; nothing here names a strategy. Points whose strategy
is unknown (failed before writing anything Hydra could tell) go at the end of the first table. Nothing here names a
metric either: the registry (guidance.metrics.registry) says which metrics are columns, their labels, decimals
and which way is better; the csv carries every registry metric.

Best per column: bold (md/tex) or `<metric>_best == "best"` (csv). Not called when the runner-up lies within the
spread: the intervals best ± std and runner-up ± std overlap (missing std counts as 0, so exact ties are not
called either).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from guidance.description import TableSpec
from guidance.metrics.registry import EXTRACTORS, METRICS, metric_label, supported
from guidance.report.collect import MODEL_ORDER, OK, Point, Sweep, is_finite

DASH = "–"  # missing value


@dataclass(frozen=True)
class Column:
    """One metric on one extractor. The sweep's leading extractor keeps the bare metric name as its id."""

    metric: str
    extractor: str | None
    leading: bool = True
    qualify: bool = False  # the sweep holds several extractors: say which one

    @property
    def id(self) -> str:
        return self.metric if self.leading else f"{self.extractor}_{self.metric}"

    @property
    def label(self) -> str:
        return metric_label(self.metric, self.extractor, self.qualify) if self.extractor else METRICS[self.metric].label

    def value(self, p: Point) -> float | None:
        return p.value(self.metric, self.extractor)

    def spread(self, p: Point) -> float | None:
        return p.spread(self.metric, self.extractor)


def sweep_columns(sweep: Sweep, measured=lambda c: True) -> list[Column]:
    """Every registry metric on every extractor of the sweep that supports it (csv), leading extractor first."""
    extractors = list(sweep.extractors) or [None]
    qualify = len(extractors) > 1
    return [Column(m, e, i == 0, qualify) for i, e in enumerate(extractors)
            for m in METRICS if (e is None or e not in EXTRACTORS or supported(m, e))]


def _table_columns(sweep: Sweep, rows: list[Point]) -> list[Column]:
    """The leading extractor's metrics the registry shows as columns ("always", or "measured" when some row has
    the value), in registry order; then each further extractor's headline metrics (FD_DINOv2, CMMD, ...) where
    measured."""
    has = lambda c: any(c.value(p) is not None for p in rows)
    out = []
    for c in sweep_columns(sweep):
        if c.leading:
            column = METRICS[c.metric].column
            keep = column == "always" or (column == "measured" and has(c))
        else:
            keep = c.metric in EXTRACTORS[c.extractor].headline and has(c) if c.extractor in EXTRACTORS else False
        if keep:
            out.append(c)
    return sorted(out, key=lambda c: not c.leading)  # stable: registry order within each group
UNKNOWN = TableSpec("unknown", "Points of unknown strategy", ("Model", "Guidance", "Scale"), order=99,
                    classifier_cost=True)
MATCHED = TableSpec("matched_cost", "Strategies at matched cost: each curve at its best-FID scale",
                    ("Strategy", "Scale"), order=100, classifier_cost=True)


@dataclass
class Table:
    spec: TableSpec
    rows: list[Point]
    caption: str = ""
    columns: list[Column] = field(default_factory=list)      # md/tex metric columns
    key_cells: object = None                                 # Point -> key cells, for tables across strategies
    best: dict[str, int] = field(default_factory=dict)       # column id -> row index of the called best
    not_called: dict[str, str] = field(default_factory=dict)  # column id -> why no best was marked

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def title(self) -> str:
        return self.spec.title


def _sort_key(p: Point):
    return (MODEL_ORDER[p.conditional], not p.baseline, p.desc.sort if p.desc and not p.baseline else (),
            p.scale if p.scale is not None else float("inf"), p.info.get("sampler_label") or p.sampler or "",
            p.steps or 0, p.name)


def fmt(x: float | None, decimals: int) -> str:
    return DASH if x is None else f"{x:.{decimals}f}"


def pick_best(rows: list[Point], column: Column | str) -> tuple[int | None, str | None]:
    """(index of the best row, None), or (None, reason) when the runner-up is within the spread."""
    col = Column(column, None) if isinstance(column, str) else column
    m = METRICS[col.metric]
    cands = [(col.value(p), col.spread(p) or 0.0, i) for i, p in enumerate(rows) if is_finite(col.value(p))]
    if len(cands) < 2:
        return None, None  # nothing to compare against
    cands.sort(key=lambda c: c[0] if m.lower_is_better else -c[0])
    (v1, s1, i1), (v2, s2, _) = cands[0], cands[1]
    if abs(v1 - v2) <= s1 + s2:  # best ± s1 and runner-up ± s2 overlap
        d = m.decimals
        return None, f"{col.label}: {v1:.{d}f} ± {s1:.{d}f} vs {v2:.{d}f} ± {s2:.{d}f}"
    return i1, None


def _caption(sweep: Sweep, rows: list[Point]) -> str:
    parts = []
    if sweep.extractors:
        spaces = [e + (f", weights {sha[:8]}" if sha and sha != "None" else "") for e, sha in sweep.extractors.items()]
        parts.append("Features: " + "; ".join(spaces))
    else:
        parts.append("Features: none recorded (no metrics.json)")
    counts = sorted({p.num_samples for p in rows if p.num_samples is not None})
    refs = sorted({p.metrics["num_reference"] for p in rows if "num_reference" in p.metrics})
    if counts:
        parts.append(f"{'/'.join(map(str, counts))} samples per point" + (f" vs {'/'.join(map(str, refs))} reference" if refs else ""))
    samplers = sorted({f"{p.info.get('sampler_label') or p.sampler}, {p.steps} steps" for p in rows if p.sampler})
    if samplers:
        parts.append("sampler " + "; ".join(samplers))
    precisions = sorted({(p.info.get("runtime") or {}).get("precision") for p in rows} - {None})
    if precisions:  # recorded since the runtime was: it moves FID (bf16 vs fp32), so the table says which made it
        parts.append("precision " + "/".join(precisions))
    return ". ".join(parts) + "."


def _table_rows(spec: TableSpec, points: list[Point]) -> list[Point]:
    """The table's own points, headed by the baselines of the models it lists, unless the sweep ran that model's
    unguided point inside the table itself (e.g. CFG at w = 0)."""
    own = [p for p in points if p.desc and p.desc.table == spec]
    ran_unguided = {p.model for p in own if p.desc.unguided}
    baselines = [p for p in points if p.baseline and p.model in spec.baseline_models and p.model not in ran_unguided]
    return sorted(own + baselines, key=_sort_key)


def build_tables(sweep: Sweep) -> list[Table]:
    specs = sorted({p.desc.table for p in sweep.points if p.desc and p.desc.table}, key=lambda s: (s.order, s.kind))
    tables = [Table(spec, _table_rows(spec, sweep.points)) for spec in specs]
    unknown = sorted((p for p in sweep.points if p.desc is None), key=_sort_key)
    if unknown:  # never drop a point: failed jobs that said nothing go under the first table
        if not tables:
            tables.append(Table(UNKNOWN, []))
        tables[0].rows.extend(unknown)
    matched = matched_cost_table(sweep)
    if matched is not None:
        tables.append(matched)
    for t in tables:
        t.caption = _caption(sweep, t.rows) + (MATCHED_NOTE if t.spec is MATCHED else "")
        t.columns = _table_columns(sweep, t.rows)
        for col in sweep_columns(sweep):
            idx, why = pick_best(t.rows, col)
            if idx is not None:
                t.best[col.id] = idx
            elif why:
                t.not_called[col.id] = why
    return tables


MATCHED_NOTE = (" Each row is one curve of the sweep (a strategy with its fixed settings) at the scale of its lowest"
                " FID, with the cost it paid per sample as counted while sampling: compare rows of equal NFE.")


def _series_cells(p: Point) -> list[str]:
    x = p.x
    scale = "–" if p.baseline or x is None else f"{p.desc.x_symbol} = {x:g}"
    return [p.desc.series if p.desc else p.strategy or "?", scale]


def matched_cost_table(sweep: Sweep) -> Table | None:
    """Best-FID point of every curve (unguided baselines included), by FID; None unless >= 2 strategies ran."""
    best: dict[str, Point] = {}
    for p in sweep.points:
        if p.status != OK or p.desc is None or not is_finite(p.value("fid")):
            continue
        key = p.desc.series
        if key not in best or p.value("fid") < best[key].value("fid"):
            best[key] = p
    if len({p.strategy for p in best.values() if not p.baseline}) < 2:
        return None
    rows = sorted(best.values(), key=lambda p: p.value("fid"))
    return Table(MATCHED, rows, key_cells=_series_cells)


# ---- cells shared by md and tex ----

def sampler_of(p: Point) -> str:
    return f"{p.info.get('sampler_label') or p.sampler or '?'}, {p.steps if p.steps is not None else '?'} steps"


def _by_sampler(t: Table) -> bool:
    """Rows made with different samplers get a Sampler column (else they would look like one point)."""
    return len({sampler_of(p) for p in t.rows if p.sampler}) > 1


def _scale_cells(t: Table, p: Point) -> list[str]:
    return _strategy_cells(t, p) + ([sampler_of(p)] if _by_sampler(t) else [])


def _strategy_cells(t: Table, p: Point) -> list[str]:
    if t.key_cells is not None:
        return t.key_cells(p)
    n = len(t.spec.key_headers)
    if p.baseline:
        return [c.format(model=p.model) for c in t.spec.baseline_cells][:n] + [DASH] * (n - len(t.spec.baseline_cells))
    if p.desc is not None and p.desc.table == t.spec:
        return list(p.desc.cells)
    cells = [p.model, p.strategy or "?", DASH if p.scale is None else f"{p.scale:g}"]  # unknown strategy
    return cells[:n] + [DASH] * (n - len(cells))


def _key_headers(t: Table) -> list[str]:
    return list(t.spec.key_headers) + (["Sampler"] if _by_sampler(t) else [])


def _has_gflop(points) -> bool:
    """GFLOP/sample is shown where some point records it (records made before FLOPs were counted have none)."""
    return any(p.gflop is not None for p in points)


def _cost_cells(t: Table, p: Point) -> list[str]:
    g = lambda x: DASH if x is None else f"{x:g}"
    cells = [g(p.nfe)]
    if t.spec.classifier_cost:
        cells.append(DASH if p.classifier_forward is None and p.classifier_backward is None
                     else f"{g(p.classifier_forward)}/{g(p.classifier_backward)}")
    if _has_gflop(t.rows):
        cells.append(DASH if p.gflop is None else f"{p.gflop:.4g}")
    return cells


def _cost_headers(t: Table) -> list[str]:
    return (["NFE/sample"] + (["Classifier fwd/bwd per sample"] if t.spec.classifier_cost else [])
            + (["GFLOP/sample"] if _has_gflop(t.rows) else []))


def _metric_cell(p: Point, col: Column, pm: str, bold) -> str:
    m = METRICS[col.metric]
    v, s = col.value(p), col.spread(p)
    if v is None:
        return DASH
    text = fmt(v, m.decimals) + (f" {pm} {fmt(s, m.decimals)}" if s is not None else "")
    return text if bold is None else bold(text)


def _has_status(t: Table) -> bool:
    return any(p.status != OK for p in t.rows)


def _grid(t: Table, pm: str, bold) -> tuple[list[str], list[list[str]]]:
    headers = _key_headers(t) + [f"{c.label} {METRICS[c.metric].arrow}" for c in t.columns]
    headers += _cost_headers(t) + (["Status"] if _has_status(t) else [])
    body = []
    for i, p in enumerate(t.rows):
        cells = _scale_cells(t, p)
        cells += [_metric_cell(p, c, pm, bold if t.best.get(c.id) == i else None) for c in t.columns]
        cells += _cost_cells(t, p) + ([p.status if p.status != OK else ""] if _has_status(t) else [])
        body.append(cells)
    return headers, body


def _better_note(columns: list[Column]) -> str:
    """ "Lower is better for FID/sFID, higher for IS/Recall; " for the columns shown, from the registry."""
    side = {way: "/".join(c.label for c in columns if METRICS[c.metric].better == way) for way in ("lower", "higher")}
    parts = [f"{way} for {labels}" for way, labels in side.items() if labels]
    if not parts:
        return ""
    text = ", ".join(parts).replace(" for ", " is better for ", 1)
    return text[0].upper() + text[1:] + "; "


def _notes(t: Table) -> list[str]:
    notes = [f"{_better_note(t.columns)}bold marks the best value per column."]
    shown = {c.id for c in t.columns}
    uncalled = [why for c, why in t.not_called.items() if c in shown]
    if uncalled:
        notes.append("Differences within ± are not called (runner-up within the spread, no bold): " + "; ".join(uncalled) + ".")
    if _has_status(t):
        notes.append(f"{DASH}: value missing, see Status.")
    return notes


def to_markdown(tables: list[Table]) -> str:
    out = []
    for n, t in enumerate(tables, 1):
        headers, body = _grid(t, "±", lambda s: f"**{s}**")
        nkey = len(_key_headers(t))
        out.append(f"### Table {n}: {t.title}\n")
        out.append(f"{t.caption}\n")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join(":---" if j < nkey or h == "Status" else "---:" for j, h in enumerate(headers)) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        out.append("")
        out += [f"{note}  " for note in _notes(t)]
        out.append("")
    return "\n".join(out)


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               DASH: "--", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "±": r"$\pm$"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(c, c) for c in s)


def to_latex(tables: list[Table]) -> str:
    out = ["% Tradeoff tables; needs \\usepackage{booktabs}. Written by guidance-tradeoff."]
    for t in tables:
        # Escape before bolding so \textbf survives; the ± marker is escaped by tex_escape too.
        headers, body = _grid(t, "±", lambda s: "\x00" + s + "\x01")
        nkey = len(_key_headers(t))
        align = "".join("l" if j < nkey or h == "Status" else "r" for j, h in enumerate(headers))
        out += ["\\begin{table}[t]", "\\centering",
                f"\\caption{{{tex_escape(t.title)}. {tex_escape(t.caption)}}}",
                f"\\label{{tab:tradeoff-{t.kind.replace('_', '-')}}}",
                f"\\begin{{tabular}}{{{align}}}", "\\toprule",
                " & ".join(tex_escape(h) for h in headers) + " \\\\", "\\midrule"]
        prev_model = None
        for p, row in zip(t.rows, body):
            if len(t.spec.baseline_models) > 1 and prev_model is not None and p.conditional != prev_model:
                out.append("\\midrule")  # ADM Table 4 separates the unconditional and conditional blocks
            prev_model = p.conditional
            cells = [tex_escape(c).replace("\x00", "\\textbf{").replace("\x01", "}") for c in row]
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        out += ["\\par\\smallskip\\footnotesize " + tex_escape(note) for note in _notes(t)]
        out += ["\\end{table}", ""]
    return "\n".join(out)


def csv_columns(columns: list[Column], gflop: bool = False) -> list[str]:
    """`gflop`: a gflop_per_sample column (when some point records it)."""
    cols = ["table", "model", "strategy", "scale", "x", "series"]
    for c in columns:
        cols += [c.id, f"{c.id}_std", f"{c.id}_best"]
    return cols + ["nfe_per_sample", "classifier_forward_per_sample", "classifier_backward_per_sample",
                   *(["gflop_per_sample"] if gflop else []), "num_samples", "seed", "sampler", "steps", "extractor", "weights_sha256", "status", "folder"]


def to_csv(tables: list[Table], sweep: Sweep) -> str:
    """One long CSV over all tables (a `table` column tells which); missing numbers are empty cells.

    `scale` is the point's own scale (s or w), `x` the value the plots sweep (e.g. s for CFG + classifier
    guidance) and `series` the curve it belongs to (with the strategy's other settings).
    Metrics of the leading extractor (`extractor` column) have
    bare names (fid, fid_std, fid_best); those of further extractors are prefixed (dinov2_fid, clip_cmmd).
    """
    buf = io.StringIO()
    columns = sweep_columns(sweep)
    gflop = _has_gflop(p for t in tables for p in t.rows)
    w = csv.DictWriter(buf, fieldnames=csv_columns(columns, gflop), lineterminator="\n")
    w.writeheader()
    e = lambda x: "" if x is None else x
    for t in tables:
        for i, p in enumerate(t.rows):
            row = dict(table=t.kind, model=p.model, strategy=e(p.strategy), scale=e(p.scale),
                       x=e(p.x),
                       series=p.desc.series if p.desc else "",
                       nfe_per_sample=e(p.nfe), classifier_forward_per_sample=e(p.classifier_forward),
                       classifier_backward_per_sample=e(p.classifier_backward), num_samples=e(p.num_samples),
                       seed=e(p.seed), sampler=e(p.sampler), steps=e(p.steps), extractor=e(p.metrics.get("extractor")),
                       weights_sha256=e(p.metrics.get("weights_sha256")), status=p.status, folder=p.name)
            if gflop:
                row["gflop_per_sample"] = e(p.gflop)
            for c in columns:
                row[c.id], row[f"{c.id}_std"] = e(c.value(p)), e(c.spread(p))
                row[f"{c.id}_best"] = "best" if t.best.get(c.id) == i else ""
            w.writerow(row)
    return buf.getvalue()
