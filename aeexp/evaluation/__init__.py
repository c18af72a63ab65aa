"""Evaluation of trained runs: test metrics beside their baselines (PCA, raw-pixel probes,
a classifier trained from scratch), figures, and sweep comparison tables."""

from aeexp.runs import RunDirError, find_runs, is_run_dir, load_run
from aeexp.evaluation.report import evaluate_run, summary_table
from aeexp.evaluation.settings import EvalSettings, check_settings
from aeexp.evaluation.sweep_table import compare_runs, markdown_table, write_comparison

__all__ = ["EvalSettings", "RunDirError", "check_settings", "compare_runs", "evaluate_run", "find_runs",
           "is_run_dir", "load_run", "markdown_table", "summary_table", "write_comparison"]
