"""Figures: learning curves of every model trained in a run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs happen on servers and in sweeps
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(histories: dict) -> "plt.Figure":
    """Test accuracy (left) and training loss (right) per epoch, one line per model/phase."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for phase, history in histories.items():
        for key, values in history.metrics.items():
            epochs = range(1, len(values) + 1)
            if key.endswith("/test_acc"):
                acc_ax.plot(epochs, values, marker="o", label=key.removesuffix("/test_acc"))
            elif key == f"{phase}/loss":
                loss_ax.plot(epochs, values, marker="o", label=phase)
    acc_ax.set(title="test accuracy", xlabel="epoch", ylabel="%")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)


# --- sweep reports ---


def heatmap(values, row_labels: list[str], col_labels: list[str], row_key: str, col_key: str, title: str,
            fmt: str = "{:.2f}", diverging: bool = False, unit: str = "") -> "plt.Figure":
    """An annotated grid: `values[i][j]` at row `row_labels[i]`, column `col_labels[j]`; NaN = no result.
    `diverging` centres the colours on 0 (gains and losses); the best cell is outlined."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    grid = np.asarray(values, dtype=float)
    finite = grid[np.isfinite(grid)]
    fig, ax = plt.subplots(figsize=(1.1 * len(col_labels) + 2.8, 0.8 * len(row_labels) + 1.8))
    cmap = plt.get_cmap("RdBu" if diverging else "viridis").with_extremes(bad="#dddddd")
    norm = None
    if diverging and finite.size:
        bound = max(float(np.abs(finite).max()), 1e-9)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    fig.colorbar(image, ax=ax, label=unit)
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set(xlabel=col_key, ylabel=row_key, title=title)
    # Every cell that ties for the best as printed (to the format's digits) is outlined.
    best_cells = set()
    if finite.size:
        shown = np.array([[float(fmt.format(v)) if np.isfinite(v) else np.nan for v in row] for row in grid])
        best_cells = {(int(i), int(j)) for i, j in np.argwhere(shown == np.nanmax(shown))}
    for (i, j), value in np.ndenumerate(grid):
        if not np.isfinite(value):
            ax.text(j, i, "—", ha="center", va="center", color="#555555")
            continue
        r, g, b, _ = cmap(image.norm(value))
        color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        ax.text(j, i, fmt.format(value), ha="center", va="center", color=color,
                fontweight="bold" if (i, j) in best_cells else "normal")
    for i, j in sorted(best_cells):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.tight_layout()
    return fig


def sweep_line(x: list, series: list[tuple[str, list[float], list[float] | None, str]], xlabel: str,
               ylabel: str, title: str, categorical: bool = False, zero_line: bool = False) -> "plt.Figure":
    """One series per `(label, y, yerr or None, linestyle)` over the swept values `x` (NaN = no result):
    a line over numbers; over categories (methods, models) points with their error bars and no
    line, since nothing lies between two categories (series side by side, a little apart)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    positions = list(range(len(x))) if categorical else x
    for k, (label, y, yerr, style) in enumerate(series):
        if categorical:
            shift = 0.08 * (k - (len(series) - 1) / 2)
            ax.errorbar([p + shift for p in positions], y, yerr=yerr, marker="o" if k == 0 else "s",
                        linestyle="none", capsize=4, label=label)
        else:
            ax.errorbar(positions, y, yerr=yerr, marker="o", linestyle=style, capsize=4, label=label)
    if categorical:
        ax.set_xticks(positions, [str(v) for v in x])
    else:
        ax.set_xticks(x, [f"{v:g}" for v in x])
    if zero_line:
        ax.axhline(0.0, color="grey", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def scatter_map(x: list[float], y: list[float], values: list[float], x_key: str, y_key: str, title: str,
                fmt: str = "{:.2f}", diverging: bool = False, unit: str = "") -> "plt.Figure":
    """Settings scattered over two numeric keys (an irregular search, where a grid would be mostly
    empty), coloured and annotated by value; the best is ringed."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    norm = None
    if diverging and finite.size:
        bound = max(float(np.abs(finite).max()), 1e-9)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = ax.scatter(x, y, c=v, cmap="RdBu" if diverging else "viridis", norm=norm, s=70,
                        edgecolors="black", linewidths=0.5, plotnonfinite=True)
    fig.colorbar(points, ax=ax, label=unit)
    for xi, yi, value in zip(x, y, v):
        if np.isfinite(value):
            ax.annotate(fmt.format(value), (xi, yi), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if finite.size:
        best = int(np.nanargmax(v))
        ax.scatter([x[best]], [y[best]], s=260, facecolors="none", edgecolors="red", linewidths=2)
    ax.set(xlabel=x_key, ylabel=y_key, title=title)
    ax.margins(0.12)  # room for the labels of points at the edges
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    """Write `fig` as a PNG and release it."""
    fig.savefig(path, dpi=120)
    plt.close(fig)


def intervals(labels: list[str], means: list[float], lows: list[float | None], highs: list[float | None],
              xlabel: str, title: str) -> "plt.Figure":
    """One horizontal bar per label: the mean as a dot, its interval as error bars (none where the
    interval is None, e.g. a single run); a zero line, since what matters is whether it is crossed."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.45 * len(labels)))
    y = np.arange(len(labels))[::-1]
    low_err = [m - lo if lo is not None else 0.0 for m, lo in zip(means, lows)]
    high_err = [hi - m if hi is not None else 0.0 for m, hi in zip(means, highs)]
    colors = ["#2a7" if lo is not None and lo > 0 else "#c33" if hi is not None and hi < 0 else "#555"
              for lo, hi in zip(lows, highs)]
    for yi, m, lo, hi, c in zip(y, means, low_err, high_err, colors):
        ax.errorbar([m], [yi], xerr=[[lo], [hi]], fmt="o", color=c, capsize=4)
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
