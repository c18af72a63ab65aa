"""The multirun comparison table (aeexp/evaluation/sweep_table.py): its columns, rounding,
order (by the validation score that selected each run, never by test) and seed aggregation.

A fake multirun directory (the files a Hydra job leaves: ``.hydra/overrides.yaml``,
``.hydra/hydra.yaml`` or ``.hydra/config.yaml``, ``metrics.json``, TensorBoard events) and a
fake ``evaluate`` keep these checks to a fraction of a second; one tiny real run checks the
figures ``evaluate_run`` gives the table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from aeexp.evaluation.sweep_table import compare_runs, group_choices, markdown_table, write_comparison


def fake_run(root: Path, job: str, overrides: list[str], choices: dict[str, str] | None, training: dict,
             epoch_seconds: list[float], config: dict | None = None) -> Path:
    run = root / job
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if choices is not None:
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {**choices, "hydra/launcher": "basic"}}}}))
    if config is not None:
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({"monitor": "val_mse", **training}))
    if epoch_seconds:
        writer = SummaryWriter(log_dir=str(run))
        for epoch, seconds in enumerate(epoch_seconds, 1):
            writer.add_scalar("perf/epoch_seconds", seconds, epoch)
        writer.close()
    return run


# job -> (latent_dim, experiment, val_mse, test_mse); test ordered against validation on purpose
JOBS = {"0": ("4", "small", 0.0312345678901234, 0.011), "1": ("8", "small", 0.0101234567890123, 0.033),
        "2": ("4", "big", 0.0209876543210987, 0.022), "3": ("8", "big", 0.0401111111111111, 0.0044)}


def fake_evaluate(values: dict[str, tuple]):
    def evaluate(run: Path) -> dict:
        val, test = values[run.name]
        return {"val_mse": val, "test_mse": test, "code_size": 4, "parameters": 6276, "pca_mse": 0.0123456789,
                "ssl10_frozen": 0.5}
    return evaluate


@pytest.fixture
def sweep(tmp_path) -> Path:
    for job, (dim, experiment, val, _) in JOBS.items():
        model = "fc" if experiment == "small" else "conv"
        overrides = ["dataset=synthetic", f"model.latent_dim={dim}", f"experiment={experiment}"]
        choices = {"dataset": "synthetic", "model": model, "experiment": experiment, "sparsity": "none"}
        if job == "3":  # no hydra.yaml (a copied run, say): the choices come from the config's name keys
            fake_run(tmp_path, job, overrides, None, {"epoch": 5, "best_epoch": 4, "best_score": val},
                     [0.5, 0.25], config={"dataset": {"name": "synthetic"}, "model": {"name": model},
                                          "sparsity": {"name": "none"}, "trainer": {"epochs": 5}, "seed": 0})
        else:
            fake_run(tmp_path, job, overrides, choices, {"epoch": 3, "best_epoch": 2, "best_score": val},
                     [1.25, 1.0, 0.123456789])
    return tmp_path


def test_group_choices_from_hydra_yaml_else_config_names(sweep):
    assert group_choices(sweep / "0") == {"dataset": "synthetic", "model": "fc", "experiment": "small",
                                          "sparsity": "none"}  # hydra/* left out
    assert group_choices(sweep / "3") == {"dataset": "synthetic", "model": "conv", "sparsity": "none"}


def test_columns_rounding_and_order_by_validation(sweep):
    values = {job: (val, test) for job, (_, _, val, test) in JOBS.items()}
    columns, rows = compare_runs(sweep, fake_evaluate(values), (RuntimeError,))
    assert columns[:4] == ["run", "model.latent_dim", "experiment", "model"]  # varied overrides, then varied groups
    assert columns[4:11] == ["code_size", "parameters", "epochs", "best_epoch", "train_seconds", "selected_by",
                             "selection_score"]
    assert {"val_mse", "test_mse", "pca_mse", "ssl10_frozen"} <= set(columns) and "dataset" not in columns
    assert [r["run"] for r in rows] == ["1", "2", "0", "3"]  # by validation: test would give 3, 0, 2, 1
    by_run = {r["run"]: r for r in rows}
    assert by_run["0"]["model"] == "fc" and by_run["3"]["model"] == "conv"
    assert by_run["0"]["train_seconds"] == pytest.approx(1.25 + 1.0 + 0.123456789)
    assert (by_run["3"]["epochs"], by_run["3"]["best_epoch"]) == (5, 4)
    assert by_run["3"]["train_seconds"] == pytest.approx(0.75)

    table = markdown_table(columns, rows)
    assert "| 1 | 8 | small | fc | 4 | 6276 | 3 | 2 | 2.373 | val_mse | 0.01012 | 0.01012 | 0.033 |" in table
    assert "0.0101234567" not in table
    csv_path, md_path = write_comparison(sweep, columns, rows)
    md = md_path.read_text()
    assert "Config groups every run shares: dataset=synthetic sparsity=none" in md and table in md
    with open(csv_path) as handle:
        records = list(csv.DictReader(handle))
    assert [r["run"] for r in records] == ["1", "2", "0", "3"]
    assert records[0]["selection_score"] == "0.01012" and records[0]["parameters"] == "6276"
    assert records[0]["train_seconds"] == "2.373" and records[0]["pca_mse"] == "0.01235"


def test_mixed_monitors_sort_by_val_mse_and_failures_last(sweep):
    record = json.loads((sweep / "1" / "metrics.json").read_text())
    (sweep / "1" / "metrics.json").write_text(json.dumps({**record, "monitor": "val_loss", "best_score": 9.0}))
    values = {job: (val, test) for job, (_, _, val, test) in JOBS.items()}

    def evaluate(run: Path) -> dict:
        if run.name == "2":
            raise RuntimeError("no best.pt")
        return fake_evaluate(values)(run)

    columns, rows = compare_runs(sweep, evaluate, (RuntimeError,))
    assert [r["run"] for r in rows] == ["1", "0", "3", "2"]  # val_mse (monitors differ), the failed run last
    assert rows[-1]["error"] == "no best.pt" and columns[-1] == "error"


@pytest.mark.slow  # trains and evaluates a run; the inner loop checks the table on a fake multirun
def test_a_real_run_gives_the_table_its_parameters_code_size_and_training_time(tmp_path):
    """One tiny trained run (1 epoch) evaluated through evaluate_run: the figures the fake above stands for."""
    import torch
    from omegaconf import OmegaConf

    from aeexp.evaluation import check_settings, evaluate_run
    from aeexp.training.run import run_training
    from conftest import small_run

    cfg = small_run("trainer.epochs=1", "model.latent_dim=6", "trainer.image_every=0")
    run = tmp_path / "0"
    run_training(cfg, run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.latent_dim=6"]))
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    settings = check_settings(OmegaConf.create({"probe_max_iter": 30, "labels_per_class": [5], "head_steps": 20,
                                                "progress": False, "noise_levels": [0.2], "figures": False}))
    columns, rows = compare_runs(tmp_path, lambda r: evaluate_run(r, settings, "cpu"), (RuntimeError,))
    (row,) = rows
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert row["parameters"] == sum(t.numel() for t in state["model"].values())  # fc: no buffers
    assert row["code_size"] == 6 and (row["epochs"], row["best_epoch"]) == (1, 1)
    assert row["train_seconds"] > 0 and row["selected_by"] == "val_mse"
    assert row["selection_score"] == pytest.approx(row["val_mse"], rel=1e-3)


def test_seeds_are_aggregated_into_mean_std_rows(tmp_path):
    """2 latent sizes x 3 seeds (and one run of size 8 that failed): each size gets a
    ``mean ± std (n=…)`` row after the six individual rows, figures checked by hand."""
    val = {(4, 0): 0.02, (4, 1): 0.03, (4, 2): 0.04, (8, 0): 0.01, (8, 1): 0.012, (8, 2): 0.5}
    test = {key: v / 2 for key, v in val.items()}
    jobs = {}
    for i, ((dim, seed), v) in enumerate(val.items()):
        fake_run(tmp_path, str(i), ["dataset=synthetic", f"model.latent_dim={dim}", f"seed={seed}"],
                 {"dataset": "synthetic", "model": "fc"},
                 {"epoch": 3, "best_epoch": 1 + seed, "best_score": v}, [1.0, 2.0 + seed])
        jobs[str(i)] = (v, test[dim, seed])
    fake_run(tmp_path, "6", ["dataset=synthetic", "model.latent_dim=8", "seed=3"],
             {"dataset": "synthetic", "model": "fc"}, {"epoch": 1}, [])

    def evaluate(run: Path) -> dict:
        if run.name == "6":
            raise RuntimeError("diverged")
        return fake_evaluate(jobs)(run)

    columns, rows = compare_runs(tmp_path, evaluate, (RuntimeError,))
    assert [r["run"] for r in rows[:7]] == ["3", "4", "0", "1", "2", "5", "6"]  # individual rows, failed last
    aggregates = rows[7:]
    assert [a["run"] for a in aggregates] == ["mean ± std (n=3)", "mean ± std (n=3)"]
    # by the mean validation score: size 4 (mean 0.03) before size 8 (mean 0.174)
    four, eight = aggregates
    assert (four["model.latent_dim"], four["seed"]) == ("4", "0,1,2")
    assert (eight["model.latent_dim"], eight["seed"]) == ("8", "0,1,2")  # the failed seed 3 is not in it

    def hand(values):  # mean and sample standard deviation (n - 1)
        mean = sum(values) / len(values)
        return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5

    for agg, dim in ((four, 4), (eight, 8)):
        for column, figures in (("val_mse", [val[dim, s] for s in range(3)]),
                                ("test_mse", [test[dim, s] for s in range(3)]),
                                ("selection_score", [val[dim, s] for s in range(3)]),
                                ("best_epoch", [1, 2, 3]), ("train_seconds", [3.0, 4.0, 5.0])):
            mean, std = hand(figures)
            assert (agg[column].mean, agg[column].std, agg[column].n) == (
                pytest.approx(mean), pytest.approx(std), 3), column
        assert agg["selected_by"] == "val_mse" and agg["parameters"].std == 0.0
    assert four["val_mse"].mean == pytest.approx(0.03) and four["val_mse"].std == pytest.approx(0.01)

    table = markdown_table(columns, rows)
    assert "| mean ± std (n=3) | 4 | 0,1,2 | 4 ± 0 | 6276 ± 0 | 3 ± 0 | 2 ± 1 | 4 ± 1 | val_mse | 0.03 ± 0.01 |" in table
    assert "| mean ± std (n=3) | 8 | 0,1,2 |" in table and "0.174 ± 0.2823" in table
    csv_path, _ = write_comparison(tmp_path, columns, rows)
    with open(csv_path) as handle:
        records = list(csv.DictReader(handle))
    assert records[7]["run"] == "mean ± std (n=3)" and records[7]["val_mse"] == "0.03 ± 0.01"


def test_no_seed_rows_without_a_seed_sweep(sweep):
    values = {job: (val, test) for job, (_, _, val, test) in JOBS.items()}
    _, rows = compare_runs(sweep, fake_evaluate(values), (RuntimeError,))
    assert len(rows) == 4 and not any(r["run"].startswith("mean") for r in rows)


def test_train_seconds_from_metrics_csv_without_tensorboard(tmp_path):
    """A run trained with ``logger=csv`` only: the epoch times are the ``epoch_seconds`` column."""
    from aeexp.evaluation.sweep_table import train_seconds

    run = fake_run(tmp_path, "0", ["model.latent_dim=4"], {"model": "fc"}, {"epoch": 2}, [])
    assert train_seconds(run) is None
    (run / "metrics.csv").write_text("epoch,val_mse,epoch_seconds\n1,0.5,1.25\n2,0.25,0.5\n")
    assert train_seconds(run) == pytest.approx(1.75)
