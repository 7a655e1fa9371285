"""Best FID at a budget: for a few compute budgets B, each strategy's lowest FID among its points that cost at most B
per sample (any scale, any step count), so strategies are compared at EQUAL cost, not at their best-FID scale.

Cost is what sampling counted: GFLOP/sample (Σ over networks of rows × measured FLOPs: classifier forward and
backward, weak networks and perturbed passes included) when every point records it, else the network passes per
sample that records made before FLOPs were counted hold: U-Net evaluations + classifier forwards + classifier
backwards, unweighted (a classifier step is not free: counting NFE alone would put classifier guidance at half
CFG's cost; the caption says which currency a table uses). Budgets: the distinct costs of the
sweep's points, merged within 10% (Heun's 19 evaluations and DDIM's 20 are one budget), at most `MAX_BUDGETS` of
the most populated picked, cheapest and costliest kept. A strategy (a curve of the sweep: guiders' describe `series`,
unguided baselines included) has a cell where some point of it fits the budget. The best cell of a column is bold
only when the runner-up lies outside the spread (tables.pick_best), as every table of the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guidance.report.collect import OK, Point, Sweep, is_finite
from guidance.report.tables import DASH, pick_best, sampler_of, tex_escape

MAX_BUDGETS = 5
MERGE = 0.10  # costs within 10% of a group's cheapest are one budget (Heun's 19 evaluations and DDIM's 20)


def passes(p: Point) -> float:
    return p.nfe + (p.classifier_forward or 0.0) + (p.classifier_backward or 0.0)


def cost_of(points: list[Point]):
    """(cost function, unit) of the sweep: GFLOP when every point records it, else network passes."""
    if all(is_finite(p.gflop) for p in points):
        return (lambda p: p.gflop), "GFLOP/sample"
    return passes, "passes/sample (U-Net + classifier fwd + bwd, unweighted: records without FLOPs)"


def budgets_of(costs: list[float], limit: int = MAX_BUDGETS) -> list[float]:
    """Distinct costs merged within MERGE (each group's largest: every member fits it); when more than `limit`,
    the cheapest, the costliest and the ones most points sit at (ties: the cheaper)."""
    groups: list[list[float]] = []
    for c in sorted(costs):
        if groups and c <= groups[-1][0] * (1 + MERGE):
            groups[-1].append(c)
        else:
            groups.append([c])
    if len(groups) > limit:
        inner = sorted(range(1, len(groups) - 1), key=lambda i: (-len(groups[i]), i))[:max(limit - 2, 0)]
        groups = [groups[i] for i in sorted({0, len(groups) - 1, *inner})]
    return [max(g) for g in groups]


@dataclass
class BudgetTable:
    unit: str
    budgets: list[float]
    strategies: list[str]
    cells: dict[tuple[str, float], Point] = field(default_factory=dict)  # (strategy, budget) -> its best point
    best: dict[float, str] = field(default_factory=dict)                 # budget -> strategy called best
    not_called: dict[float, str] = field(default_factory=dict)           # budget -> why no best was called


def budget_table(sweep: Sweep) -> BudgetTable | None:
    """None unless two strategies have a point with FID and a cost."""
    points = [p for p in sweep.points if p.status == OK and p.desc is not None and is_finite(p.value("fid"))
              and is_finite(p.nfe)]
    if len({p.desc.series for p in points}) < 2:
        return None
    cost, unit = cost_of(points)
    points = [p for p in points if is_finite(cost(p))]
    table = BudgetTable(unit, budgets_of([cost(p) for p in points]),
                        sorted({p.desc.series for p in points}))
    for b in table.budgets:
        column = []
        for s in table.strategies:
            fits = [p for p in points if p.desc.series == s and cost(p) <= b * (1 + 1e-9)]
            if fits:
                table.cells[(s, b)] = min(fits, key=lambda p: p.value("fid"))
                column.append((s, table.cells[(s, b)]))
        idx, why = pick_best([p for _, p in column], "fid")
        if idx is not None:
            table.best[b] = column[idx][0]
        elif why:
            table.not_called[b] = why
    return table


def _cell(t: BudgetTable, s: str, b: float, pm: str, bold) -> str:
    p = t.cells.get((s, b))
    if p is None:
        return DASH
    spread = p.spread("fid")
    text = f"{p.value('fid'):.2f}" + ("" if spread is None else f" {pm} {spread:.2f}")
    text = bold(text) if t.best.get(b) == s else text
    setting = ("unguided" if p.baseline or p.x is None else f"{p.desc.x_symbol} = {p.x:g}") + f", {sampler_of(p)}"
    return f"{text} ({setting})"


def _header(t: BudgetTable, b: float) -> str:
    return f"≤ {b:.4g} {t.unit.split('/')[0]}"


def budget_markdown(t: BudgetTable, number: int) -> str:
    out = [f"### Table {number}: Best FID at a budget\n",
           f"Each cell: the strategy's lowest FID among its points costing at most the column's budget per sample "
           f"({t.unit}, as counted while sampling), with the setting that reached it.\n",
           "| Strategy | " + " | ".join(_header(t, b) for b in t.budgets) + " |",
           "|:---|" + "|".join("---:" for _ in t.budgets) + "|"]
    for s in t.strategies:
        out.append(f"| {s} | " + " | ".join(_cell(t, s, b, "±", lambda x: f"**{x}**") for b in t.budgets) + " |")
    out.append("")
    out.append("Lower is better; bold marks the best FID per budget.  ")
    if t.not_called:
        out.append("Differences within ± are not called (runner-up within the spread, no bold): "
                   + "; ".join(f"{_header(t, b)}: {why}" for b, why in t.not_called.items()) + ".  ")
    out.append("")
    return "\n".join(out)


def budget_latex(t: BudgetTable) -> str:
    cols = "l" + "r" * len(t.budgets)
    out = [r"\begin{table}[t]", r"\centering", r"\caption{Best FID at a budget}", r"\label{tab:tradeoff-budget}",
           rf"\begin{{tabular}}{{{cols}}}",
           r"\toprule", " & ".join(["Strategy"] + [tex_escape(_header(t, b)) for b in t.budgets]) + r" \\",
           r"\midrule"]
    for s in t.strategies:
        cells = [tex_escape(_cell(t, s, b, "±", lambda x: "\x00" + x + "\x01")) for b in t.budgets]
        cells = [c.replace("\x00", r"\textbf{").replace("\x01", "}") for c in cells]
        out.append(" & ".join([tex_escape(s)] + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)
