"""Loss curves and score charts (matplotlib, saved as PNG and returned for inline display)."""

from pathlib import Path

import matplotlib.pyplot as plt


def _curve(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [h for h in history if key in h]
    return [h["step"] for h in rows], [h[key] for h in rows]


def plot_loss(history: list[dict], path: str | Path | None = None, title: str = "Loss"):
    return plot_losses({"": history}, path, title)


def plot_losses(histories: dict[str, list[dict]], path: str | Path | None = None, title: str = "Loss"):
    """Training loss per step (solid), held-out loss per epoch (dashed) and its lowest point (a star: where early
    stopping and keep_best settle), one colour per run, on a log scale that keeps the late, small losses readable."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (label, history) in enumerate(histories.items()):
        colour = f"C{i}"
        prefix = f"{label}: " if label else ""
        ax.plot(*_curve(history, "loss"), color=colour, marker="o", markersize=2.5, label=f"{prefix}training")
        steps, validation = _curve(history, "validation_loss")
        if validation:
            ax.plot(steps, validation, color=colour, linestyle="--", marker="s", label=f"{prefix}validation (held out)")
            best = validation.index(min(validation))
            star = dict(color=colour, marker="*", markersize=14, label=f"{prefix}lowest validation")
            ax.plot(steps[best], validation[best], **star)
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens, log scale)", yscale="log")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, title, path)


def plot_scores(scores: dict[str, dict], metrics: list[str], path: str | Path | None = None, title: str = "Scores"):
    """Grouped bars: one group per metric, one bar per model (values in [0, 1])."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.8 / max(len(scores), 1)
    for i, (label, values) in enumerate(scores.items()):
        xs = [m + i * width for m in range(len(metrics))]
        ax.bar(xs, [values[m] for m in metrics], width=width, label=label)
    ax.set_xticks([m + width * (len(scores) - 1) / 2 for m in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, ax, title, path)


def _finish(fig, ax, title: str, path: str | Path | None):
    """Title and legend, then saved (where a path is given) and closed: returned for inline display."""
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
