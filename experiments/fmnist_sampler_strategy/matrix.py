"""Sampler x strategy at matched U-Net passes, from this folder's tradeoff.csv (the report's own numbers):
    python experiments/fmnist_sampler_strategy/matrix.py > experiments/fmnist_sampler_strategy/matrix.md
prints the table and writes plots/sampler_strategy.png (FID against U-Net passes, a panel per strategy, a line per
sampler, the bootstrap spread as error bars). A cell is FID ± its bootstrap spread; per strategy and budget, the best
sampler is bold only when no other sampler's interval (FID ± spread) overlaps its own, as every table of the report
calls a best."""

import csv
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
SAMPLERS = ("ddim", "dpmpp_2m", "heun")
STRATEGIES = (("none", "unguided (conditional)"), ("cfg", "CFG w = 1"), ("classifier", "classifier s = 1"))


def read_points(csv_path: Path) -> dict:
    """(strategy, budget, sampler) -> (fid, spread, passes); Heun's 2N - 1 passes sit in the others' 2N budget."""
    rows = {}
    for r in csv.DictReader(open(csv_path)):
        budget = round(float(r["nfe_per_sample"]) / 10) * 10
        rows.setdefault((r["strategy"], budget, r["sampler"]),
                        (float(r["fid"]), float(r["fid_std"]), float(r["nfe_per_sample"])))
    return rows


def best_sampler(cells: dict) -> str | None:
    """The lowest FID, only if its interval lies wholly below every other sampler's."""
    have = sorted((v[0], v[1], m) for m, v in cells.items() if v)
    if len(have) > 1 and all(have[0][0] + have[0][1] < f - s for f, s, _ in have[1:]):
        return have[0][2]
    return None


def table(rows: dict) -> str:
    lines = ["| strategy | U-Net passes | " + " | ".join(SAMPLERS) + " |", "|:---|---:|" + "---:|" * len(SAMPLERS)]
    for strategy, _ in STRATEGIES:
        for budget in sorted({b for s, b, _ in rows if s == strategy}):
            cells = {m: rows.get((strategy, budget, m)) for m in SAMPLERS}
            best = best_sampler(cells)
            out = []
            for m in SAMPLERS:
                v = cells[m]
                text = "–" if v is None else f"{v[0]:.2f} ± {v[1]:.2f} ({v[2]:g})"
                out.append(f"**{text}**" if m == best else text)
            lines.append(f"| {strategy} | {budget} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(STRATEGIES), figsize=(12, 3.8), sharey=True)
    for ax, (strategy, title) in zip(axes, STRATEGIES):
        for m in SAMPLERS:
            pts = sorted(v[::-1] for (s, _, mm), v in rows.items() if s == strategy and mm == m)  # (passes, spread, fid)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[2] for p in pts], yerr=[p[1] for p in pts],
                            marker="o", capsize=3, label=m)
        ax.set(title=title, xlabel="U-Net passes per sample", xscale="log", yscale="log")
        ax.set_xticks([10, 20, 40], ["10", "20", "40"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("FID (evaluator features, lower is better)")
    axes[0].legend()
    fig.suptitle("Fashion-MNIST, 2000 samples per point, fp32: which sampler for which strategy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    points = read_points(HERE / "tradeoff.csv")
    print(table(points))
    plot(points, HERE / "plots" / "sampler_strategy.png")
