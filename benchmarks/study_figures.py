"""The two figures of the study (benchmarks/study.py), from study.json's cells: top-1 against cumulative
compute (study_curves.png) and final top-1 per variant with the seed spread (study_final.png)."""

from __future__ import annotations

from matplotlib.figure import Figure
from study_report import VARIANTS, cumulative, summary_rows

VARIANT_COLOURS = {"baseline": "black", "toe": "tab:blue", "toe-drop": "tab:orange", "random": "tab:green"}


def curves_figure(study: dict) -> Figure:
    """Top-1 (model) against cumulative compute, one column per length: measured seconds (top row) and
    analytic multiply-adds in full-token epochs (bottom row); every cell a curve, one colour per variant."""
    lengths = sorted({c["length"] for c in study["cells"] if c["epochs"]})
    figure = Figure(figsize=(5 * max(len(lengths), 1), 8), layout="constrained")
    axes = figure.subplots(2, max(len(lengths), 1), squeeze=False)
    for column, length in enumerate(lengths):
        full_epoch = max(
            (e["forward_macs"] or 0.0 for c in study["cells"] if c["length"] == length for e in c["epochs"]),
            default=0.0,
        )  # the forward multiply-adds of a full-token epoch (every schedule ends full-token)
        for row, (axis, scale, label) in enumerate(
            (
                ("train_compute_time", 1.0, "cumulative train compute time (s)"),
                ("forward_macs", 1 / (full_epoch or 1.0), "cumulative compute, analytic (full-token epochs)"),
            )
        ):
            ax = axes[row][column]
            labelled = set()
            for cell in (c for c in study["cells"] if c["length"] == length and c["epochs"]):
                epochs = [e for e in cell["epochs"] if e["test_acc1"] is not None and e[axis] is not None]
                if not epochs:
                    continue
                variant = cell["variant"]
                ax.plot(
                    [x * scale for x in cumulative([e[axis] for e in epochs])],
                    [e["test_acc1"] for e in epochs],
                    color=VARIANT_COLOURS.get(variant, "tab:gray"),
                    marker=".",
                    linewidth=1.2 if variant == "baseline" else 1.0,
                    label=None if variant in labelled else variant,
                )
                labelled.add(variant)
            ax.set_title(f"{length} epochs", fontsize=10)
            ax.set_xlabel(label)
            ax.set_ylabel("top-1 % (model)")
            ax.grid(alpha=0.3)
            if labelled:
                ax.legend(fontsize=8)
    return figure


def final_figure(study: dict) -> Figure:
    """Final top-1 (model) per variant: the mean as a bar with its standard deviation, every seed a dot;
    one group of bars per length. A second panel shows the holdout top-1 when cells have one."""
    rows = summary_rows(study["cells"])
    lengths = sorted({row.length for row in rows})
    variants = [v for v in VARIANTS if any(row.variant == v for row in rows)]
    panels = [
        ("validation set", lambda row: row.values["final_acc1"], lambda cell: cell["totals"]["final_acc1"]),
    ]
    if any(c.get("holdout") for c in study["cells"]):
        panels.append(
            ("holdout set", lambda row: row.holdout_acc1, lambda cell: (cell["holdout"] or {}).get("test_acc1"))
        )
    figure = Figure(figsize=(2 + 2.2 * max(len(lengths), 1) * len(panels), 4.5), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    figure.suptitle("final top-1 per variant (bar: mean, line: ± std, dots: seeds)", fontsize=10)
    finals = []
    for ax, (name, spread_of, value_of) in zip(axes, panels):
        finals += _final_panel(ax, study, rows, lengths, variants, spread_of, value_of)
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("final top-1 % (model)")
    if finals:
        axes[0].set_ylim(max(0.0, min(finals) - 10), min(100.0, max(finals) + 5))
    if variants:
        axes[0].legend(fontsize=8)
    return figure


def _final_panel(
    ax, study: dict, rows: list, lengths: list[int], variants: list[str], spread_of, value_of
) -> list[float]:
    """Bars and seed dots of one measure (``spread_of(row)``: a Spread, ``value_of(cell)``: a seed's value);
    returns the values drawn."""
    width = 0.8 / max(len(variants), 1)
    drawn = []
    for i, variant in enumerate(variants):
        for group, length in enumerate(lengths):
            row = next((r for r in rows if r.length == length and r.variant == variant), None)
            spread = None if row is None else spread_of(row)
            if spread is None:
                continue
            x = group + (i - (len(variants) - 1) / 2) * width
            colour = VARIANT_COLOURS.get(variant, "tab:gray")
            ax.bar(x, spread.mean, width * 0.9, color=colour, alpha=0.35, label=variant if group == 0 else None)
            if spread.std is not None:
                ax.errorbar(x, spread.mean, yerr=spread.std, color=colour, capsize=3)
            cells = (c for c in study["cells"] if c["status"] == "done" and c["length"] == length)
            seeds = [v for c in cells if c["variant"] == variant and (v := value_of(c)) is not None]
            ax.plot([x] * len(seeds), seeds, linestyle="none", marker="o", markersize=4, color=colour)
            drawn += seeds
    ax.set_xticks(range(len(lengths)), [f"{length} epochs" for length in lengths])
    ax.grid(alpha=0.3, axis="y")
    return drawn
