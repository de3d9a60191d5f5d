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
