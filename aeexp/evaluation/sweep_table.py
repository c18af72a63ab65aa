"""Compare the runs of a multirun directory in one table.

Each Hydra job of a sweep records its command-line overrides in ``.hydra/overrides.yaml``;
the overrides whose values differ between runs are what the sweep varied, so they become
the table's leading columns (shared ones, like ``dataset=fashion_mnist``, would only repeat).
Then the config-group choices that differ between runs (``model=fc``, from the job's
``.hydra/hydra.yaml`` runtime choices, else from the ``name`` keys of its config; the
choices every run shares are written once below ``comparison.md``'s table), and what
training recorded: ``code_size``, ``parameters``, ``epochs`` trained, ``best_epoch``,
``train_seconds`` (the sum of the TensorBoard ``perf/epoch_seconds``), the score that
selected ``best.pt`` (``selection_score``, on validation, by ``selected_by``), then the
validation and test figures. Floats are rounded to 4 significant digits in the printed
table and in both files; counts stay whole. Rows are sorted by the selection score when every
run was selected by the same monitor, else by ``val_mse`` (both validation; ordering by a test
figure would make the table itself a selection on test). A run that cannot be evaluated (a
diverged run without ``best.pt``, say) keeps its row, last, with the reason.

Seeds: when ``seed`` is among the varied overrides, evaluated runs that differ only in it (the
same other varied overrides and group choices) also get one aggregate row per group of two or
more, after the individual rows (which stay): ``run`` is ``mean ± std (n=<n>)``, the seed
column lists the seeds, every numeric column is ``mean ± std`` (sample standard deviation,
n - 1), text columns the runs share are kept; these rows are sorted by the mean of the same
validation score.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from aeexp.runs import find_runs

log = logging.getLogger(__name__)

KEY_METRICS = ("val_mse", "test_mse", "pca_mse", "mse_vs_pca", "test_psnr", "test_fvu", "test_l0", "dead_fraction",
               "probe_accuracy", "pixel_probe_accuracy", "knn_accuracy")
GROUND_TRUTH_METRICS = ("mmcs", "recovered_90")  # columns where the data knows its true features (sparse_features)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """``key=value`` lines of ``.hydra/overrides.yaml`` as a dict (``+``/``~`` kept in the key)."""
    items = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    pairs = (str(item).split("=", 1) for item in items)
    return {pair[0]: (pair[1] if len(pair) > 1 else "") for pair in pairs}


def varying_keys(overrides: list[dict[str, str]]) -> list[str]:
    """Override keys whose value is not the same in every run, in first-seen order."""
    keys: list[str] = []
    for o in overrides:
        keys += [k for k in o if k not in keys]
    return [k for k in keys if len({o.get(k, "") for o in overrides}) > 1]


TRAINING_COLUMNS = ("code_size", "parameters", "epochs", "best_epoch", "train_seconds", "selected_by",
                    "selection_score")
SIGNIFICANT_DIGITS = 4


def group_choices(run_dir: Path) -> dict[str, str]:
    """The run's config-group choices (``{"model": "fc", ...}``): Hydra's runtime choices in
    ``.hydra/hydra.yaml`` (its own ``hydra/*`` groups left out), else the ``name`` key of
    each top-level node of ``.hydra/config.yaml``; empty when neither is readable."""
    hydra_yaml, config_yaml = run_dir / ".hydra" / "hydra.yaml", run_dir / ".hydra" / "config.yaml"
    try:
        if hydra_yaml.is_file():
            choices = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices")
            if choices is not None:
                return {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra/")}
        if config_yaml.is_file():
            config = OmegaConf.load(config_yaml)
            return {str(k): str(v["name"]) for k, v in config.items()
                    if OmegaConf.is_dict(v) and isinstance(v.get("name"), (str, int))}
    except Exception as err:  # a damaged file costs the columns, not the table
        log.warning("%s: no config-group choices (%s)", run_dir, err)
    return {}


def training_record(run_dir: Path) -> dict[str, Any]:
    """What training wrote in ``metrics.json`` (empty if unreadable)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def scalar_history(run_dir: Path, tag: str) -> dict[int, float]:
    """``step -> value`` of one TensorBoard scalar over the run's event files (a resumed run adds
    one; a step written twice keeps its last value); empty without TensorBoard or the tag."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        from tensorboard.util import tensor_util
    except ImportError:
        return {}
    history: dict[int, float] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag == tag:
                        number = value.simple_value if value.HasField("simple_value") else None
                        if number is None and value.HasField("tensor"):
                            number = float(tensor_util.make_ndarray(value.tensor))
                        if number is not None:
                            history[event.step] = float(number)
        except Exception as err:  # a truncated events file: what was read so far
            log.warning("%s: %s", path, err)
    return history


HISTORY_TAGS = {"val_mse": "val/mse", "val_denoise_mse": "val/denoise_mse", "epoch_seconds": "perf/epoch_seconds"}


def csv_history(run_dir: Path, key: str) -> dict[int, float]:
    """``epoch -> value`` of one column of ``<run>/metrics.csv`` (``logger=csv``: one row per
    epoch); empty without the file or the column, an empty cell left out."""
    try:
        with open(run_dir / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        if not isinstance(err, FileNotFoundError):
            log.warning("%s: metrics.csv: %s", run_dir, err)
        return {}


def epoch_history(run_dir: Path, key: str) -> dict[int, float]:
    """``epoch -> value`` of a per-epoch figure (``val_mse``, ``val_denoise_mse``,
    ``epoch_seconds``): the run's TensorBoard scalar, else its ``metrics.csv`` column (a run
    trained with ``logger=csv`` only); ``metrics.json`` keeps the last epoch alone."""
    return scalar_history(run_dir, HISTORY_TAGS[key]) or csv_history(run_dir, key)


def train_seconds(run_dir: Path) -> float | None:
    """The sum of the run's ``epoch_seconds`` (TensorBoard's ``perf/epoch_seconds``, else
    ``metrics.csv``; one value per epoch, a resumed epoch counted once, its last value), or
    None without either."""
    per_epoch = epoch_history(run_dir, "epoch_seconds")
    return sum(per_epoch.values()) if per_epoch else None


def compare_runs(root: Path, evaluate: Callable[[Path], dict[str, Any]],
                 errors: tuple[type[BaseException], ...]) -> tuple[list[str], list[dict[str, Any]]]:
    """Evaluate every run under ``root``; return the table's columns and rows (sorted). An
    evaluated row also holds ``kind`` (``images`` or ``vectors``), which is not a column."""
    runs = find_runs(root)
    overrides = [read_overrides(run) for run in runs]
    varied = varying_keys(overrides)
    choices = [group_choices(run) for run in runs]
    varied_groups = [g for g in varying_keys(choices) if g not in varied]
    rows, ssl_columns = [], []
    for run, o, c in zip(runs, overrides, choices):
        row: dict[str, Any] = {"run": str(run.relative_to(root)), **{k: o.get(k, "") for k in varied},
                               **{g: c.get(g, "") for g in varied_groups}}
        record = training_record(run)
        row.update({"epochs": record.get("epoch"), "best_epoch": record.get("best_epoch"),
                    "train_seconds": train_seconds(run), "selected_by": record.get("monitor"),
                    "selection_score": record.get("best_score")})
        try:
            metrics = evaluate(run)
        except errors as err:
            log.error("%s: %s", run, err)
            row["error"] = str(err)
        else:
            row.update({"code_size": metrics.get("code_size"), "parameters": metrics.get("parameters"),
                        "kind": metrics.get("kind", "images")})  # not a column: the pictures' choice of MSE or FVU
            row.update({k: metrics.get(k) for k in KEY_METRICS})  # vectors have no PSNR, unlabelled ones no probes
            for key in metrics:
                if (key.startswith("ssl") or key in GROUND_TRUTH_METRICS) and key not in ssl_columns:
                    ssl_columns.append(key)
            row.update({k: metrics[k] for k in ssl_columns if k in metrics})
        rows.append(row)
    rows.sort(key=sort_key(rows))
    columns = ["run", *varied, *varied_groups, *TRAINING_COLUMNS, *KEY_METRICS, *ssl_columns]
    rows += seed_rows(rows, [k for k in varied if _is_seed(k)], [*varied, *varied_groups], columns)
    if any("error" in r for r in rows):
        columns.append("error")
    return columns, rows


class MeanStd:
    """A seed group's figure: mean, sample standard deviation (n - 1 in the denominator; 0 for
    one value) and the number of runs it is over; shown ``mean ± std`` at 4 significant digits."""

    def __init__(self, values: list[float]):
        self.n = len(values)
        if min(values) == max(values):  # the same figure in every run: exactly it, std 0 (no rounding residue)
            self.mean, self.std = values[0], 0.0
        else:
            self.mean = sum(values) / self.n
            self.std = math.sqrt(sum((v - self.mean) ** 2 for v in values) / (self.n - 1))

    def __str__(self) -> str:
        return f"{self.mean:.{SIGNIFICANT_DIGITS}g} ± {self.std:.{SIGNIFICANT_DIGITS}g}"

    __repr__ = __str__


def _is_seed(key: str) -> bool:
    return key.lstrip("+~") == "seed"


def seed_rows(rows: list[dict[str, Any]], seed_keys: list[str], identity: list[str],
              columns: list[str]) -> list[dict[str, Any]]:
    """One extra row per group of evaluated runs that differ only in ``seed`` (n >= 2): the
    numeric columns as :class:`MeanStd`, the shared text columns as they are, ``run``
    ``mean ± std (n=<n>)`` and the seed column the seeds it is over. The individual rows stay;
    these come after them, sorted by the mean of the same validation score."""
    if not seed_keys:
        return []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault(tuple(row.get(k) for k in identity if k not in seed_keys), []).append(row)
    aggregates = []
    for members in groups.values():
        if len(members) < 2:
            continue
        aggregate: dict[str, Any] = {"run": f"mean ± std (n={len(members)})"}
        for column in columns:
            if column == "run":
                continue
            if column in seed_keys:
                aggregate[column] = ",".join(str(m.get(column, "")) for m in members)
                continue
            values = [m.get(column) for m in members]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                aggregate[column] = MeanStd([float(v) for v in values])
            elif len({str(v) for v in values}) == 1:
                aggregate[column] = values[0]
        aggregates.append(aggregate)
    by = "selection_score" if all(isinstance(a.get("selection_score"), MeanStd) for a in aggregates) and \
        len({str(a.get("selected_by")) for a in aggregates}) == 1 else "val_mse"
    aggregates.sort(key=lambda a: (not isinstance(a.get(by), MeanStd), a[by].mean if isinstance(a.get(by), MeanStd) else 0.0))
    return aggregates


def sort_key(rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], tuple]:
    """By the selection score if every evaluated run was selected by the same monitor, else by
    ``val_mse`` (validation either way); runs without the figure, and failed runs, last."""
    evaluated = [r for r in rows if "error" not in r]
    monitors = {r.get("selected_by") for r in evaluated}
    by = "selection_score" if len(monitors) == 1 and None not in monitors else "val_mse"

    def key(row: dict[str, Any]) -> tuple:
        value = row.get(by)
        missing = "error" in row or not isinstance(value, (int, float)) or not math.isfinite(value)
        return (missing, value if not missing else 0.0)
    return key


def shared_choices(root: Path, columns: list[str]) -> dict[str, str]:
    """The config-group choices every run under ``root`` shares (not already a column)."""
    choices = [group_choices(run) for run in find_runs(root)]
    if not choices:
        return {}
    return {g: v for g, v in choices[0].items() if g not in columns and all(c.get(g) == v for c in choices)}


def rounded(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """A float rounded to ``digits`` significant digits (ints, strings, non-finite as they are)."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{digits}g}")
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT_DIGITS}g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(root: Path, columns: list[str], rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``comparison.csv`` and ``comparison.md`` in ``root`` (floats to 4 significant digits)."""
    csv_path, md_path = root / "comparison.csv", root / "comparison.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: rounded(v) for k, v in r.items()} for r in rows)
    shared = shared_choices(root, columns)
    note = f"\nConfig groups every run shares: {' '.join(f'{g}={v}' for g, v in shared.items())}\n" if shared else ""
    md_path.write_text(f"# Runs under {root}, sorted by their validation selection score (test figures are for "
                       f"reading, not choosing)\n\n" + markdown_table(columns, rows) + note)
    return csv_path, md_path
