"""How the report shows a sampled point: data types only (no torch), shared by the strategies and report/.

A strategy's `describe(info)` (guidance.guiders) turns a point's sample_info into a `Description`: which table
(`TableSpec`) it belongs in, its key cells, row order and curve. report/ receives the describe function from its
caller (`build_report(..., describe=guidance.guiders.describe_point)`), so it imports no strategy and no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TableSpec", "Description", "fmt", "model_of"]


@dataclass(frozen=True)
class TableSpec:
    """One tradeoff table: its key columns, where it goes, and which unguided baselines head it."""

    kind: str                                # file/label key, e.g. "cfg"
    title: str
    key_headers: tuple[str, ...]             # e.g. ("w",) or ("Model", "Guidance", "Scale s")
    order: int = 50                          # tables and curves are listed by this
    classifier_cost: bool = False            # show classifier passes per sample
    baseline_models: tuple[str, ...] = ()    # unguided baselines ("conditional", "unconditional") shown as rows
    baseline_cells: tuple[str, ...] = ()     # their key cells; "{model}" is replaced by the model


@dataclass(frozen=True)
class Description:
    """How the report shows one point."""

    table: TableSpec | None                  # None: an unguided baseline (joins tables that list its model)
    cells: tuple[str, ...] = ()              # key cells, one per table.key_headers
    sort: tuple[float, ...] = ()             # row order within the table
    series: str = ""                         # plot curve label
    x: float | None = None                   # swept value on the plots' x axis
    x_symbol: str = "scale"
    unguided: bool = False                   # this point IS an unguided model (scale 0 or no guidance)


def fmt(x) -> str:
    """A key cell: the number as written (%g), or a dash when the point did not record it."""
    return "–" if x is None else f"{x:g}"


def model_of(info: dict) -> str:
    return {True: "conditional", False: "unconditional"}.get(info.get("conditional"), "?")
