"""Pictures of a sweep, beside its comparison table: PNG files in the multirun directory and
images in a TensorBoard event file under ``<multirun>/comparison/`` (so ``tensorboard --logdir
<multirun>`` shows them as a run named ``comparison``).

- ``comparison_validation_curves.png`` (tag ``sweep/validation_curves``): every job's
  validation curve on one plot, from the run's own TensorBoard scalars, else its
  ``metrics.csv`` (``logger=csv``; ``metrics.json`` holds only the last epoch): the metric
  that selected ``best.pt`` when every run was selected by the same one (``val_mse`` or
  ``val_denoise_mse``), else ``val_mse``; log-scale y, one line per job labelled by what the
  sweep varied, in the table's order.
- ``comparison_frontier.png`` (``sweep/frontier``): the sparsity-reconstruction trade-off,
  one point per job: test L0 (nonzero code entries per sample; the run's ``sparsity.weight``
  where a row has no L0) against test MSE (images) or test FVU (vectors, whose scale is the
  data's), the Pareto front marked (:func:`pareto_front`: both axes are better lower).
- ``comparison_heatmap.png`` (``sweep/selection_heatmap``): for a sweep whose varied overrides
  are exactly two keys, the validation selection score on the grid of their values, each cell
  annotated; any other sweep gets one log line saying why it has none.

Only runs that were evaluated take part (a failed run is in the table, with its reason).
matplotlib is imported inside the functions, so ``import aeexp`` never loads it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from omegaconf import OmegaConf

from aeexp.evaluation.sweep_table import HISTORY_TAGS, TRAINING_COLUMNS, epoch_history, read_overrides, varying_keys
from aeexp.pictures import figure_image, pyplot, save_png
from aeexp.runs import find_runs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PNG_NAMES = {"validation_curves": "comparison_validation_curves.png", "frontier": "comparison_frontier.png",
             "selection_heatmap": "comparison_heatmap.png"}
TENSORBOARD_DIR = "comparison"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each point (both coordinates better lower), whether it is on the Pareto front: no
    other point is <= in both coordinates and < in at least one. Equal points are both on it."""
    return [not any(ox <= x and oy <= y and (ox < x or oy < y) for ox, oy in points) for x, y in points]


def grid_of(rows: list[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[str]] | str:
    """The two keys' values (rows of the heatmap, then columns, numbers in numeric order) when
    ``keys`` are exactly two and each pair of values belongs to one run at most; else the reason
    there is no grid, as one phrase."""
    if len(keys) != 2:
        return f"the sweep varies {len(keys)} override key(s) ({', '.join(keys) or 'none'}), a heatmap needs exactly 2"
    pairs = [(str(r.get(keys[0], "")), str(r.get(keys[1], ""))) for r in rows]
    if len(set(pairs)) < len(pairs):
        return f"several runs share values of {keys[0]} and {keys[1]}, so they are not one grid"
    return _ordered({a for a, _ in pairs}), _ordered({b for _, b in pairs})


def _ordered(values: set[str]) -> list[str]:
    def key(value: str) -> tuple:
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, 0.0, value)
    return sorted(values, key=key)


def _log_scale(axis, set_scale, values: list[float]) -> None:
    """A log scale with plain tick labels (0.25, not 2.5 x 10^-1); within one decade, where a
    log axis would have one tick or none, ticks at round values spread over the range."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    set_scale("log")
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    axis.set_major_formatter(plain)
    if max(values) < 10 * min(values):
        axis.set_major_locator(MaxNLocator(nbins=6))
        axis.set_minor_locator(NullLocator())


def curves_figure(curves: dict[str, dict[int, float]], metric: str) -> Figure:
    """One line per job (``label -> {epoch: value}``), log-scale y, the legend beside the plot
    (20 colours, then dashed lines, so 16 or 40 jobs stay apart)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(10, 5), dpi=100)
    pairs = plt.get_cmap("tab20").colors  # a dark and a light shade of each of 10 hues: the dark ones first
    colours = pairs[0::2] + pairs[1::2]
    for i, (label, history) in enumerate(curves.items()):
        epochs = sorted(history)
        axes.plot(epochs, [history[e] for e in epochs], marker="." if len(epochs) < 30 else None, label=label,
                  color=colours[i % len(colours)], linestyle=("-", "--", ":")[i // len(colours) % 3], linewidth=1.2)
    values = [v for h in curves.values() for v in h.values()]
    if all(v > 0 for v in values):
        _log_scale(axes.yaxis, axes.set_yscale, values)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{metric} (validation)")
    axes.set_title(f"validation curves of {len(curves)} runs", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1 if len(curves) <= 24 else 2,
                frameon=False)
    figure.tight_layout()
    return figure


def frontier_figure(points: list[tuple[float, float]], labels: list[str], x_name: str, y_name: str) -> Figure:
    """The points, numbered in table order (the key beside the plot names each; points closer
    than a few pixels share one annotation, "3,4"), the Pareto front ringed and joined in order of x."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    on_front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(11, 6), dpi=100)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    axes.scatter(xs, ys, s=22, color="tab:blue", zorder=2)
    front = sorted(p for p, on in zip(points, on_front) if on)
    front_line, = axes.plot([p[0] for p in front], [p[1] for p in front], color="tab:red", linewidth=1, marker="o",
                            markersize=9, markerfacecolor="none", zorder=3)
    if all(v > 0 for v in ys):
        _log_scale(axes.yaxis, axes.set_yscale, ys)
    if all(v > 0 for v in xs) and max(xs) >= 10 * min(xs):
        _log_scale(axes.xaxis, axes.set_xscale, xs)
    axes.autoscale_view()
    pixels = axes.transData.transform(points)
    clusters: list[list[int]] = []
    for i, (px, py) in enumerate(pixels):
        near = next((c for c in clusters if abs(pixels[c[0]][0] - px) < 6 and abs(pixels[c[0]][1] - py) < 6), None)
        near.append(i) if near is not None else clusters.append([i])
    for cluster in clusters:
        axes.annotate(",".join(str(i + 1) for i in cluster), points[cluster[0]], textcoords="offset points",
                      xytext=(5, 3), fontsize=7)
    axes.set_xlabel(f"{x_name} (lower: sparser)")
    axes.set_ylabel(f"{y_name} (lower: better reconstruction)")
    axes.set_title("sparsity against reconstruction, one point per run", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend([front_line], [f"Pareto front ({len(front)} of {len(points)})"], fontsize=8, loc="upper right")
    key = [Line2D([], [], linestyle="")] * len(labels)
    figure.legend(key, [f"{i + 1}: {label}" for i, label in enumerate(labels)], loc="upper left",
                  bbox_to_anchor=(0.7, 0.95), fontsize=7, frameon=False, handlelength=0, handletextpad=0)
    figure.tight_layout(rect=(0, 0, 0.7, 1))
    return figure


def heatmap_figure(values: list[list[float]], row_key: str, row_values: list[str], column_key: str,
                   column_values: list[str], score: str) -> Figure:
    """``values[i][j]`` (NaN: no evaluated run) as coloured cells, each annotated with its value."""
    import numpy as np

    plt = pyplot()
    grid = np.array(values, dtype=float)
    figure, axes = plt.subplots(figsize=(max(1.2 * len(column_values) + 3, 7), 0.6 * len(row_values) + 2.5), dpi=100)
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
    figure.colorbar(image, ax=axes, label="lower is better")
    axes.set_xticks(range(len(column_values)), column_values)
    axes.set_yticks(range(len(row_values)), row_values)
    axes.set_xlabel(column_key)
    axes.set_ylabel(row_key)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid[i, j]
            text, colour = ("-", "black") if not math.isfinite(value) else (
                f"{value:.4g}", "white" if value > middle else "black")  # viridis_r: dark for high values
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    axes.set_title(f"validation {score}", fontsize=10)
    figure.tight_layout()
    return figure


def _labels(runs: list[dict[str, Any]], identity: list[str]) -> list[str]:
    """What the sweep varied, ``model.latent_dim=8 sparsity=topk``; the run's folder where that
    is nothing, or added where two runs would otherwise share a label."""
    labels = [" ".join(f"{k}={r.get(k, '')}" for k in identity) for r in runs]
    return [str(r["run"]) if not label else f"{label} ({r['run']})" if labels.count(label) > 1 else label
            for label, r in zip(labels, runs)]


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _sparsity_weight(run_dir: Path) -> float | None:
    try:
        return _number(OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), "sparsity.weight"))
    except Exception:  # no readable config: the run has no point
        return None


def validation_curves(root: Path, runs: list[dict[str, Any]], identity: list[str],
                      monitor: str | None) -> tuple[str, dict[str, dict[int, float]]]:
    """The figure plotted (the runs' shared ``monitor``, else ``val_mse``) and each run's
    ``{epoch: value}`` of it (TensorBoard scalars, else ``metrics.csv``), by label; runs
    without it are left out."""
    key = monitor if monitor in HISTORY_TAGS else "val_mse"
    curves = {label: epoch_history(root / str(r["run"]), key) for label, r in zip(_labels(runs, identity), runs)}
    return key, {label: history for label, history in curves.items() if history}


def frontier_points(root: Path, runs: list[dict[str, Any]],
                    identity: list[str]) -> tuple[str, str, list[tuple[float, float]], list[str]]:
    """x and y names, the points and their labels: ``test_l0`` (``sparsity.weight`` from the run's
    ``.hydra/config.yaml`` unless every run has an L0) against ``test_mse``, or ``test_fvu`` when
    every run is of vectors; runs without both figures are left out."""
    y_key = "test_fvu" if all(r.get("kind") == "vectors" for r in runs) else "test_mse"
    x_key = "test_l0" if all(_number(r.get("test_l0")) is not None for r in runs) else "sparsity.weight"
    points, labels = [], []
    for r, label in zip(runs, _labels(runs, identity)):
        x = _number(r.get("test_l0")) if x_key == "test_l0" else _sparsity_weight(root / str(r["run"]))
        y = _number(r.get(y_key))
        if x is not None and y is not None:
            points.append((x, y))
            labels.append(label)
    return x_key, y_key, points, labels


def heatmap_cells(runs: list[dict[str, Any]], keys: list[str],
                  score: str) -> tuple[list[str], list[str], list[list[float]]] | str:
    """The grid's row values, column values and ``score`` per cell (NaN where no evaluated run
    has that pair), or :func:`grid_of`'s reason for having none."""
    grid = grid_of(runs, keys)
    if isinstance(grid, str):
        return grid
    cells = {(str(r.get(keys[0], "")), str(r.get(keys[1], ""))): _number(r.get(score)) for r in runs}
    values = [[math.nan if cells.get((a, b)) is None else cells[a, b] for b in grid[1]] for a in grid[0]]
    return grid[0], grid[1], values


def sweep_pictures(root: Path, columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Figure]:
    """The figures of the sweep under ``root`` whose comparison table is ``columns`` / ``rows``
    (:func:`aeexp.evaluation.sweep_table.compare_runs`), by name; a figure that cannot be drawn
    is left out with one log line saying why."""
    runs = [r for r in rows if "error" not in r and (root / str(r["run"])).is_dir()]  # not the seed aggregates
    identity = columns[1:columns.index(TRAINING_COLUMNS[0])]  # varied overrides, then varied groups
    figures: dict[str, Figure] = {}
    if not runs:
        log.info("sweep pictures: no evaluated run")
        return figures
    monitors = {r.get("selected_by") for r in runs}
    monitor = str(next(iter(monitors))) if len(monitors) == 1 and None not in monitors else None

    key, curves = validation_curves(root, runs, identity, monitor)
    if curves:
        figures["validation_curves"] = curves_figure(curves, key)
    else:
        log.info("sweep pictures: no validation curves (no run has %s per epoch in TensorBoard events or "
                 "metrics.csv)", key)

    x_key, y_key, points, labels = frontier_points(root, runs, identity)
    if points:
        figures["frontier"] = frontier_figure(points, labels, x_key, y_key)
    else:
        log.info("sweep pictures: no frontier (no run has both %s and %s)", x_key, y_key)

    keys = varying_keys([read_overrides(run) for run in find_runs(root)])
    score = "selection_score" if monitor else "val_mse"  # as the table sorts: validation either way
    heatmap = heatmap_cells(runs, keys, score)
    if isinstance(heatmap, str):
        log.info("sweep pictures: no heatmap: %s", heatmap)
    else:
        name = f"{score} ({monitor})" if monitor else score
        figures["selection_heatmap"] = heatmap_figure(heatmap[2], keys[0], heatmap[0], keys[1], heatmap[1], name)
    return figures


def write_sweep_pictures(root: Path, columns: list[str], rows: list[dict[str, Any]]) -> list[Path]:
    """Draw :func:`sweep_pictures`; write each as ``<root>/comparison_<name>.png`` and as the
    image ``sweep/<name>`` of ``<root>/comparison/`` (that folder's earlier events and a picture
    this sweep no longer has are removed, so both show this comparison only). Returns the PNGs."""
    from torch.utils.tensorboard import SummaryWriter

    figures = sweep_pictures(root, columns, rows)
    folder = root / TENSORBOARD_DIR
    folder.mkdir(exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    written = []
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for name, png in PNG_NAMES.items():
            path = root / png
            if name not in figures:
                path.unlink(missing_ok=True)
                continue
            image = figure_image(figures[name])  # closes the figure
            save_png(image, path)
            writer.add_image(f"sweep/{name}", image, 0)
            written.append(path)
    finally:
        writer.close()
    return written
