"""The ``logger`` group: which trackers a run reports to (TensorBoard by default, a CSV file,
MLflow, several at once), each read back with its own reader (csv.DictReader, TensorBoard's
event reader, MLflow's client) and compared with metrics.json and with each other."""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aeexp.cli import check_command_line
from aeexp.config import ConfigError, validate
from aeexp.registry import TRACKERS
from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run import run_training
from aeexp.training.trackers import SCALARS, CsvTracker
from cli_runner import run_cli
from conftest import CONF_DIR, compose, event_scalars, sigterm_at_step, small_run

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install aeexp[mlflow])")


def read_csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def same_figures(row: dict[str, str], metrics: dict) -> None:
    """A CSV row says what a metrics.json record says, figure by figure (tags and status are
    the run's, not the epoch's; an empty cell is a figure metrics.json leaves out)."""
    for key, value in row.items():
        expected = metrics.get(key)
        if expected is None:
            assert value == "", key
        elif isinstance(expected, float):
            assert float(value) == expected, key  # written with repr: exact
        else:
            assert value == str(expected), key
    assert set(metrics) - set(row) <= {"tags", "status", "error"}


# ------------------------------------------------------------------------- the config
def test_tensorboard_is_the_default_and_a_config_without_logger_gets_it():
    assert OmegaConf.to_container(validate(compose()).logger) == {"tensorboard": {}}
    plain = OmegaConf.to_container(compose(), resolve=False)
    old = OmegaConf.create({k: v for k, v in plain.items() if k != "logger"})  # written before the group existed
    assert OmegaConf.to_container(validate(old).logger) == {"tensorboard": {}}


ALL_THREE = "logger=[tensorboard,csv,mlflow]"


def test_a_list_of_options_chooses_several_trackers():
    cfg = validate(compose(ALL_THREE, "logger.mlflow.experiment_name=mine"), trackers_installed=False)
    assert list(cfg.logger) == ["tensorboard", "csv", "mlflow"]
    assert cfg.logger.mlflow == {"tracking_uri": None, "experiment_name": "mine", "artifact_location": None}


def test_an_unknown_tracker_is_one_line_listing_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        validate(compose("+logger.wandb={}"))
    message = str(info.value)
    assert message.startswith("logger: got 'wandb'") and "\n" not in message
    assert all(name in message for name in ("csv", "mlflow", "tensorboard"))
    with pytest.raises(ConfigError) as info:
        validate(compose("+logger.csv.every=2"))
    assert str(info.value).startswith("logger.csv.every: unknown key")


def test_the_command_line_takes_a_list_of_options_and_refuses_an_unknown_one():
    check_command_line(["logger=[tensorboard,csv,mlflow]"], CONF_DIR)  # refuses nothing
    for line in ("logger=nosuch", "logger=[csv,nosuch]"):
        with pytest.raises(ConfigError) as info:
            check_command_line([line], CONF_DIR)
        assert str(info.value).startswith("logger: got 'nosuch', allowed: one of csv, mlflow, tensorboard"), line


def test_mlflow_not_installed_is_one_line_naming_logger_and_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = compose(ALL_THREE)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value) == ("logger: got 'mlflow', but mlflow is not installed: pip install aeexp[mlflow] "
                               "(or choose other trackers: csv, tensorboard)")
    validate(cfg, trackers_installed=False)  # load_run: evaluating an MLflow run needs no MLflow
    validate(compose())  # the default needs nothing more


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "logger").glob("*.yaml")))
def test_each_option_file_is_its_trackers_defaults(option):
    """As tests/test_defaults.py for the other groups: conf/logger/<name>.yaml adds the key
    <name>, whose values are the registered schema's defaults."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "logger" / f"{option}.yaml"))
    assert list(node) == [option] and option in TRACKERS
    schema = TRACKERS.schema(option)
    assert node[option] == {f.name: f.default for f in fields(schema)}


# -------------------------------------------------------------------------------- CSV
def record(epoch: int, **figures) -> dict:
    return {"epoch": epoch, "val_mse": 1.0 / epoch, "mmcs": None, "stage_name": "joint", **figures}


def test_csv_appends_and_an_epoch_trained_again_replaces_its_row(tmp_path):
    tracker = CsvTracker(tmp_path)
    for epoch in (1, 2, 3):
        tracker.epoch(record(epoch), epoch, {})
    assert [r["epoch"] for r in read_csv(tmp_path)] == ["1", "2", "3"]
    again = CsvTracker(tmp_path)  # resumed from epoch 1's checkpoint: epochs 2 and 3 train again
    again.epoch(record(2, val_mse=0.25), 2, {})
    rows = read_csv(tmp_path)
    assert rows == [{"epoch": "1", "val_mse": "1.0", "mmcs": "", "stage_name": "joint"},
                    {"epoch": "2", "val_mse": "0.25", "mmcs": "", "stage_name": "joint"}]


def test_csv_drops_a_row_cut_short_by_a_crash(tmp_path):
    tracker = CsvTracker(tmp_path)
    tracker.epoch(record(1), 1, {})
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("2,0.5")  # the process died mid-write; epoch 2's checkpoint never landed either
    CsvTracker(tmp_path).epoch(record(2), 2, {})
    assert [r["val_mse"] for r in read_csv(tmp_path)] == ["1.0", "0.5"]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.slow  # the inner loop: the CSV tests above (rows, resume, a torn row) on the tracker itself
def test_csv_rows_are_each_epochs_metrics_and_resume_appends_the_missing_epochs(tmp_path):
    run_training(small_run("logger=csv", "trainer.epochs=2"), tmp_path)
    second = json.loads((tmp_path / "metrics.json").read_text())  # epoch 2's record
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # csv alone: no TensorBoard
    run_training(small_run("logger=[tensorboard,csv]", "trainer.epochs=4", "trainer.resume=true"), tmp_path)
    rows = read_csv(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    same_figures(rows[1], second)
    same_figures(rows[3], json.loads((tmp_path / "metrics.json").read_text()))
    scalars = event_scalars(tmp_path)  # TensorBoard joined on resume: epochs 3 and 4
    for row in rows[2:]:
        for tag, key in SCALARS.items():
            if row.get(key):
                assert scalars[tag][int(row["epoch"])] == pytest.approx(float(row[key]), rel=1e-6), tag


# ----------------------------------------------------------------------------- MLflow
@needs_mlflow
@pytest.mark.slow  # the inner loop: the logger config tests above (no training, no MLflow store)
def test_one_run_in_tensorboard_csv_and_mlflow_and_resume_continues_the_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", tmp_path / "store"
    every = (ALL_THREE, "trainer.image_every=1", "trainer.log_every_n_steps=4", f"paths.output_dir={store}")
    with sigterm_at_step(monkeypatch, 12), pytest.raises(TrainingInterrupted):  # epoch 2, after its 4th step
        run_training(small_run(*every, "trainer.epochs=2"), run_dir)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")  # the default store
    experiment = client.get_experiment_by_name("aeexp")
    (interrupted,) = client.search_runs([experiment.experiment_id])
    assert interrupted.info.status == "KILLED" and [int(r["epoch"]) for r in read_csv(run_dir)] == [1]
    run_training(small_run(*every, "trainer.epochs=3", "trainer.resume=true"), run_dir)

    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [interrupted.info.run_id]  # the resumed run went on with its MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(run_dir)
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    assert run.data.params["model.name"] == "fc" and run.data.params["trainer.batch_size"] == "64"
    assert run.data.params["trainer.epochs"] == "2"  # MLflow parameters do not change: the first value stays
    assert not any(key.startswith("paths.") for key in run.data.params)

    rows = read_csv(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scalars = event_scalars(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key, tag in (("val_mse", "val/mse"), ("train_loss", "train/loss"), ("lr", "lr")):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {int(r["epoch"]): float(r[key]) for r in rows}, key
        assert history[3] == metrics[key]
        assert scalars[tag] == pytest.approx(history, rel=1e-6), tag
    steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "step/train_loss")}
    assert sorted(steps) == list(range(4, 25, 4))  # 8 optimizer steps an epoch, every 4th (12: before the signal)
    assert scalars["step/train_loss"] == pytest.approx(steps, rel=1e-6)

    pictures = sorted(p.name for p in (run_dir / "images").glob("*.png"))
    assert pictures
    for epoch in (1, 2, 3):
        logged = client.list_artifacts(run.info.run_id, f"images/epoch_{epoch:04d}")
        assert sorted(Path(a.path).name for a in logged) == pictures, epoch
    assert "metrics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    last = Path(client.download_artifacts(run.info.run_id, f"images/epoch_0003/{pictures[0]}", str(tmp_path)))
    assert last.read_bytes() == (run_dir / "images" / pictures[0]).read_bytes()


@needs_mlflow
@pytest.mark.slow  # the inner loop: test_the_command_line_takes_a_list_of_options_and_refuses_an_unknown_one
def test_train_py_with_several_loggers_and_the_default_mlflow_store(tmp_path):
    code, output = run_cli("train.py", ["dataset=synthetic", "dataset.num_train=256", "dataset.num_val=128",
                                        "trainer.epochs=1", "trainer.progress=false", "device=cpu",
                                        "logger=[csv,mlflow]", "hydra.run.dir=outputs/run"], tmp_path, timeout=120)
    assert code == 0, output
    run_dir = tmp_path / "outputs" / "run"
    assert len(read_csv(run_dir)) == 1 and not list(run_dir.glob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aeexp").experiment_id])
    assert run.info.run_name == "run" and run.data.params["dataset"] == "synthetic"  # the group choices too
