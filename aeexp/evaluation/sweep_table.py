"""Compare the runs of a multirun directory in one table.

Each Hydra job of a sweep records its command-line overrides in ``.hydra/overrides.yaml``;
the overrides whose values differ between runs are what the sweep varied, so they become
the table's leading columns (shared ones, like ``dataset=fashion_mnist``, would only repeat).
Rows are sorted by ``val_mse`` (the validation split, which also selected each run's
``best.pt``): ordering by a test figure would make the table itself a selection on test. A run that cannot be evaluated (a diverged run without
``best.pt``, say) keeps its row, last, with the reason.
"""

from __future__ import annotations

import csv
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


def compare_runs(root: Path, evaluate: Callable[[Path], dict[str, Any]],
                 errors: tuple[type[BaseException], ...]) -> tuple[list[str], list[dict[str, Any]]]:
    """Evaluate every run under ``root``; return the table's columns and rows (sorted)."""
    runs = find_runs(root)
    overrides = [read_overrides(run) for run in runs]
    varied = varying_keys(overrides)
    rows, ssl_columns = [], []
    for run, o in zip(runs, overrides):
        row: dict[str, Any] = {"run": str(run.relative_to(root)), **{k: o.get(k, "") for k in varied}}
        try:
            metrics = evaluate(run)
        except errors as err:
            log.error("%s: %s", run, err)
            row["error"] = str(err)
        else:
            row.update({k: metrics.get(k) for k in KEY_METRICS})  # vectors have no PSNR, unlabelled ones no probes
            for key in metrics:
                if (key.startswith("ssl") or key in GROUND_TRUTH_METRICS) and key not in ssl_columns:
                    ssl_columns.append(key)
            row.update({k: metrics[k] for k in ssl_columns if k in metrics})
        rows.append(row)
    rows.sort(key=lambda r: (r.get("val_mse") is None, r.get("val_mse") or 0.0))
    columns = ["run", *varied, *KEY_METRICS, *ssl_columns]
    if any("error" in r for r in rows):
        columns.append("error")
    return columns, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(root: Path, columns: list[str], rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``comparison.csv`` (full precision) and ``comparison.md`` in ``root``."""
    csv_path, md_path = root / "comparison.csv", root / "comparison.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(f"# Runs under {root}, sorted by val_mse (validation; test figures are for reading, not choosing)\n\n" + markdown_table(columns, rows))
    return csv_path, md_path
