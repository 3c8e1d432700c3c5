"""Figures of training runs and of functions, written to image files.

Every function draws on a fresh `matplotlib.figure.Figure` with the Agg canvas and saves it,
so it works without a display and never touches pyplot's global state or backend.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

PathLike = str | os.PathLike
History = Mapping[str, Sequence[float]]

__all__ = ["plot_activations", "plot_density", "plot_ensemble", "plot_history"]


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


class _PlainLog(LogFormatterSciNotation):
    """Log-axis labels as plain numbers (0.75, 2, 1e-05) on the ticks matplotlib labels."""

    def __call__(self, x, pos=None):
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def _log_scale(ax) -> None:
    """A log y axis whose labels read 0.75 rather than 7.5 × 10⁻¹."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLog())
    ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False))


def _finish_epoch_axes(ax, ylabel: str, *, legend: bool = True) -> None:
    """The labels, whole-epoch ticks, grid and legend ("best" placed) every per-epoch panel
    has; a panel with no curve (a run resumed with no epoch left to train) says so."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, "no epochs trained", ha="center", va="center", transform=ax.transAxes)
    elif legend:
        ax.legend(loc="best")


def _figure_legend(fig: Figure, ax) -> None:
    """One legend for panels that share their entries, below them: many runs or members
    would cover a panel's curves."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))


def _save_titled(fig: Figure, path: PathLike, title: str | None) -> pathlib.Path:
    if title:
        fig.suptitle(title, parse_math=False)  # a file name's $ or _ is not mathtext
    return _save(fig, path)


def _plain(label: str) -> str:
    """A label drawn as written: mathtext's ``$`` escaped."""
    return label.replace("$", r"\$")


def _epochs(history: History, key: str | None = None) -> np.ndarray:
    """The epochs, counted from 1, of `key`'s values (by default, of the first metric's):
    the history's ``epoch`` entries when there is one per value, else 1, 2, ..."""
    n = len(history.get(key) or next(iter(v for k, v in history.items() if k != "epoch"), []))
    epochs = history.get("epoch")
    if epochs is None or len(epochs) != n:
        epochs = range(n)
    return np.asarray(epochs) + 1


def _panels(history: History, loss_name: str) -> list[tuple[str, str, bool]]:
    """``(metric, y label, log scale)`` of the panels worth drawing for a history."""
    panels = [("loss", loss_name, True)]
    if "accuracy" in history or "val_accuracy" in history:
        panels.append(("accuracy", "accuracy", False))
    return panels


def plot_history(
    history: History, path: PathLike, *, title: str | None = None, loss_name: str = "loss"
) -> pathlib.Path:
    """Learning curves: loss (log scale) and accuracy per epoch, training and held-out.

    `history` is `fit`'s ``{metric: [value per epoch]}`` (``epoch``, ``loss``, ``val_loss``,
    ``accuracy``, ``val_accuracy``, ...). The epoch of the lowest held-out loss is marked.
    `loss_name` labels the loss axis (``"softmax cross-entropy"``). Returns the path written.
    """
    panels = _panels(history, loss_name)
    fig, axes = _figure(5.0 * len(panels), 3.8, 1, len(panels))
    epochs = _epochs(history)
    best = None
    if history.get("val_loss"):
        best = epochs[int(np.nanargmin(history["val_loss"]))]
    for ax, (metric, label, log) in zip(axes[0], panels, strict=True):
        for key, name, style in ((metric, "train", "-"), (f"val_{metric}", "held-out", "--")):
            if history.get(key):
                marker = "." if len(epochs) <= 60 else None
                ax.plot(epochs, history[key], style, marker=marker, label=name)
        if best is not None:
            ax.axvline(best, color="0.6", linestyle=":", label=f"best epoch ({best})")
        if log:
            _log_scale(ax)
        final = history.get(f"val_{metric}") or history.get(metric)
        if metric == "accuracy" and final:
            which = "held-out" if history.get("val_accuracy") else "training"
            ax.set_title(f"{metric} ({which}, last epoch {final[-1]:.2%})")
        else:
            ax.set_title(metric)
        _finish_epoch_axes(ax, label)
    return _save_titled(fig, path, title)


def plot_ensemble(
    histories: Sequence[History],
    path: PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    loss_name: str = "loss",
) -> pathlib.Path:
    """The spread of an ensemble's learning curves: each member, their mean and min–max band.

    `histories` holds one `fit` history per member (`fit_ensemble`'s ``result.history``);
    members that stopped early simply end sooner. Held-out curves are drawn when present,
    training curves otherwise. `labels` name the members in the legend; `loss_name` labels
    the loss axis.
    """
    panels = _panels(histories[0], loss_name)
    fig, axes = _figure(5.0 * len(panels), 3.8, 1, len(panels))
    labels = list(labels) if labels is not None else [f"member {k}" for k in range(len(histories))]
    for ax, (metric, label, log) in zip(axes[0], panels, strict=True):
        key = f"val_{metric}" if histories[0].get(f"val_{metric}") else metric
        curves = {}
        for history, name in zip(histories, labels, strict=True):
            epochs = _epochs(history, key)
            ax.plot(epochs, history[key], linewidth=0.9, alpha=0.6, label=_plain(name))
            for e, v in zip(epochs, history[key], strict=True):
                curves.setdefault(int(e), []).append(v)
        epochs = np.array(sorted(curves))
        values = [np.asarray(curves[e]) for e in epochs]
        low = [v.min() for v in values]
        high = [v.max() for v in values]
        ax.fill_between(epochs, low, high, color="0.5", alpha=0.2, label="min–max")
        ax.plot(epochs, [v.mean() for v in values], color="black", linewidth=2, label="mean")
        if log:
            _log_scale(ax)
        which = "held-out" if key.startswith("val_") else "training"
        ax.set_title(f"{which} {metric}, {len(histories)} members")
        _finish_epoch_axes(ax, label, legend=False)
    _figure_legend(fig, axes[0, 0])
    return _save_titled(fig, path, title)


def plot_runs(
    histories: Mapping[str, History],
    path: PathLike,
    *,
    title: str | None = None,
    loss_name: str = "loss",
) -> pathlib.Path:
    """The learning curves of several runs on one figure, to compare them.

    `histories` maps a run's label to its `fit` history. Each run gets one colour: training
    curves solid, held-out curves dashed; loss on a log scale (`loss_name` labels its axis),
    accuracy beside it when any run has one.
    """
    if not histories:
        raise ValueError("plot_runs needs at least one history")
    merged = {k: v for history in histories.values() for k, v in history.items()}
    panels = _panels(merged, loss_name)
    fig, axes = _figure(5.0 * len(panels), 3.8, 1, len(panels))
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for ax, (metric, label, log) in zip(axes[0], panels, strict=True):
        for (name, history), colour in zip(histories.items(), colours, strict=True):
            for key, style, suffix in ((metric, "-", ""), (f"val_{metric}", "--", " (held-out)")):
                if history.get(key):
                    epochs = _epochs(history, key)
                    shown = _plain(name + suffix)
                    ax.plot(epochs, history[key], style, color=colour, label=shown)
        if log:
            _log_scale(ax)
        ax.set_title(metric)
        _finish_epoch_axes(ax, label, legend=False)
    _figure_legend(fig, axes[0, 0])
    return _save_titled(fig, path, title)


def plot_density(
    grid: Sequence[float] | jax.Array,
    density: Sequence[float] | jax.Array,
    path: PathLike,
    *,
    eigenvalues: Sequence[float] | jax.Array | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """A Hessian's spectral density ``φ(λ)`` on a grid, log scale, with its top eigenvalues.

    `grid` and `density` have shape ``(g,)`` (e.g. from `funcnet.diff.density_on_grid`);
    `eigenvalues`, if given, are marked as vertical lines.
    """
    grid, density = np.asarray(grid, float), np.asarray(density, float)
    fig, axes = _figure(6.4, 4.0)
    ax = axes[0, 0]
    floor = max(density.max() * 1e-8, 1e-30)
    ax.semilogy(grid, np.maximum(density, floor), color="tab:blue")
    ax.set_ylim(bottom=floor * 10)
    if eigenvalues is not None:
        for i, value in enumerate(np.asarray(eigenvalues, float)):
            label = "top eigenvalues" if i == 0 else None
            ax.axvline(value, color="tab:red", linestyle=":", linewidth=1, label=label)
        ax.legend()
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density φ(λ)")
    ax.set_title(title or "Hessian eigenvalue density")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


_VECTOR_FUNCTIONS = ("softmax", "log_softmax")
# sine is SIREN's sin(ω₀x) with ω₀ = 30: a window of a few periods shows its shape.
_DOMAINS = {"sine": (-0.4, 0.4)}


def _on_two_logits(fn: Callable) -> Callable:
    return lambda t: fn(jnp.stack([t, jnp.zeros_like(t)]))[0]


def plot_activations(
    path: PathLike,
    functions: Mapping[str, Callable] | None = None,
    *,
    x: Sequence[float] | jax.Array | None = None,
    columns: int = 5,
) -> pathlib.Path:
    """A gallery of activation functions ``f(x)`` and their derivatives ``f'(x)`` by `jax.grad`.

    `functions` defaults to every entry of `funcnet.nn.ACTIVATIONS`; `x` to 801
    points on ``[−4, 4]`` (``[−0.4, 0.4]`` for ``sine``, whose frequency is ω₀ = 30).
    ``softmax`` and ``log_softmax`` act on vectors, so they are drawn on two logits
    ``(x, 0)``: ``softmax(x, 0)₀ = σ(x)``.
    """
    if functions is None:
        from funcnet.nn import ACTIVATIONS as functions
    rows = -(-len(functions) // columns)
    fig, axes = _figure(3.0 * columns, 2.4 * rows, rows, columns)
    for ax, (name, fn) in zip(axes.flat, functions.items(), strict=False):
        if x is not None:
            points = jnp.asarray(x, jnp.float32)
        else:
            points = jnp.linspace(*_DOMAINS.get(name, (-4.0, 4.0)), 801)
        scalar = _on_two_logits(fn) if name in _VECTOR_FUNCTIONS else fn
        value, slope = jax.jit(jax.vmap(lambda t, f=scalar: (f(t), jax.grad(f)(t))))(points)
        ax.plot(points, value, color="tab:blue", label="f(x)")
        ax.plot(points, slope, color="tab:orange", linestyle="--", label="f′(x)")
        ax.axhline(0, color="0.7", linewidth=0.6)
        ax.axvline(0, color="0.7", linewidth=0.6)
        title = f"{name}(x, 0)₀" if name in _VECTOR_FUNCTIONS else name
        if x is None and name in _DOMAINS:
            title += f" on [{_DOMAINS[name][0]}, {_DOMAINS[name][1]}]"
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    spare = list(axes.flat)[len(functions) :]
    for ax in spare:
        ax.axis("off")
    handles = axes[0, 0].get_legend_handles_labels()
    if spare:  # in an empty cell of the grid
        spare[0].legend(*handles, loc="center")
    else:
        fig.legend(*handles, loc="outside right upper")
    fig.supxlabel("x")
    fig.supylabel("f(x) and f′(x)")
    fig.suptitle("activation functions f (solid) and their derivatives f′ by jax.grad (dashed)")
    return _save(fig, path)
