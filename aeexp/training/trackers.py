"""Where a run reports its figures besides ``metrics.json`` and ``train.log``: the trackers of
the ``logger`` config group (``logger=tensorboard``, the default; ``logger=csv``;
``logger=mlflow``; several at once: ``logger=[tensorboard,csv,mlflow]``).

Each option file of ``conf/logger/`` adds one key under ``logger`` (``csv: {}``), so a list of
options merges into one node naming every tracker chosen; :func:`aeexp.config.validate`
checks each against the schema registered here. :class:`~aeexp.training.run_log.RunLog` builds
the chosen trackers and calls each in turn: ``start`` when training begins, ``step`` /
``epoch`` / ``images`` as figures come, ``finish`` once at the end with the run's status
(completed, failed or interrupted). A tracker implements only what it records.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.tensorboard import SummaryWriter

from aeexp.registry import TRACKERS
from aeexp.training.tensorboard import flatten_config, group_choices, write_hparams

log = logging.getLogger(__name__)

DEFAULT_LOGGER = {"tensorboard": {}}
"""A config without a ``logger`` node (written before the group existed, or composed without
it) reports where every run did before: TensorBoard."""


class Tracker:
    """What RunLog calls; each method does nothing unless a tracker records that kind of figure.

    ``requires``: the module a tracker needs that aeexp does not install by default, checked by
    :func:`aeexp.config.validate` before any work (``pip install aeexp[<name>]``)."""

    requires: Optional[str] = None

    def start(self, config: dict[str, Any]) -> None:
        """Training begins (or resumes); ``config`` is the run's whole config, resolved."""

    def step(self, scalars: dict[str, float], step: int) -> None:
        """Per-step scalars (``step/train_loss``...) at the global optimizer step."""

    def epoch(self, metrics: dict[str, Any], step: int, histograms: dict[str, torch.Tensor]) -> None:
        """An epoch's figures (every :class:`EpochRecord` field but tags and status, None where
        absent) at ``step`` = the epoch; ``histograms``: per-latent tensors."""

    def images(self, pictures: dict[str, torch.Tensor], pngs: dict[str, Path], step: int) -> None:
        """The training pictures of epoch ``step``, as tensors and as the PNG files just written."""

    def finish(self, status: str, metrics: dict[str, Any], config: dict[str, Any]) -> None:
        """The run ends with ``status`` (completed, failed, interrupted) and its final metrics."""


# ------------------------------------------------------------------ TensorBoard
SCALARS = {  # TensorBoard tag -> EpochRecord field
    "train/loss": "train_loss", "train/mse": "train_mse", "train/penalty": "train_penalty", "train/aux": "train_aux",
    "val/mse": "val_mse", "val/denoise_mse": "val_denoise_mse", "val/noisy_input_mse": "val_noisy_mse",
    "val/fvu": "val_fvu", "val/explained_variance": "val_explained_variance",
    "latent/val_l0": "val_l0", "latent/dead_fraction": "dead_fraction",
    "latent/val_mean_activation": "val_mean_activation", "lr": "lr", "stage": "stage",
    "perf/samples_per_second": "samples_per_second", "perf/epoch_seconds": "epoch_seconds",
    "features/mmcs": "mmcs", "features/recovered_90": "recovered_90",  # data with true features
}
HPARAM_METRICS = ("val_mse", "best_val_mse", "best_score", "train_mse", "mmcs", "recovered_90")


@dataclass
class TensorBoardTrackerConfig:
    """``logger.tensorboard``: no settings; the event files go to the run folder."""


@TRACKERS.register("tensorboard", schema=TensorBoardTrackerConfig)
class TensorBoardTracker(Tracker):
    """Event files in the run folder (``tensorboard --logdir outputs``): scalars, histograms,
    pictures, and on completion the HParams entry that lines runs up side by side."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.writer: SummaryWriter | None = None

    def start(self, config: dict[str, Any]) -> None:
        self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def step(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def epoch(self, metrics: dict[str, Any], step: int, histograms: dict[str, torch.Tensor]) -> None:
        for tag, key in SCALARS.items():
            if metrics.get(key) is not None:
                self.writer.add_scalar(tag, metrics[key], step)
        for tag, values in histograms.items():
            self.writer.add_histogram(tag, values, step)
        self.writer.flush()

    def images(self, pictures: dict[str, torch.Tensor], pngs: dict[str, Path], step: int) -> None:
        for name, image in pictures.items():
            self.writer.add_image(name, image, step)
        self.writer.flush()

    def finish(self, status: str, metrics: dict[str, Any], config: dict[str, Any]) -> None:
        if status == "completed":
            write_hparams(self.writer, config, {k: metrics[k] for k in HPARAM_METRICS if k in metrics}, group_choices())
        self.writer.close()


# ------------------------------------------------------------------------- CSV
@dataclass
class CsvTrackerConfig:
    """``logger.csv``: no settings; the file is ``<run>/metrics.csv``."""


@TRACKERS.register("csv", schema=CsvTrackerConfig)
class CsvTracker(Tracker):
    """``<run>/metrics.csv``: one row per epoch, one column per figure (the first row's keys;
    an absent figure is an empty cell), for pandas, a spreadsheet or ``csv.DictReader``.

    A resumed run appends; epochs it trains again (resumed from an earlier checkpoint than
    the file's last row) replace their old rows, so each epoch has one row, from the weights
    the run went on with."""

    FILENAME = "metrics.csv"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / self.FILENAME

    def epoch(self, metrics: dict[str, Any], step: int, histograms: dict[str, torch.Tensor]) -> None:
        row = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        header, rows, whole = self._read()
        if whole and header == list(row) and all(int(r["epoch"]) < step for r in rows):
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
            return
        kept = [r for r in rows if int(r["epoch"]) < step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            writer.writeheader()
            writer.writerows([*kept, row])

    def _read(self) -> tuple[list[str], list[dict[str, str]], bool]:
        """(header, complete rows, whether the file may be appended to): a row cut short by a
        crash mid-write is left out, and the file is then written anew."""
        if not self.path.is_file():
            return [], [], False
        text = self.path.read_text()
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        complete = [r for r in rows if None not in r and None not in r.values() and r["epoch"].isdigit()]
        return list(reader.fieldnames or []), complete, text.endswith("\n") and len(complete) == len(rows)


# ----------------------------------------------------------------------- MLflow
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MLFLOW_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values


@dataclass
class MlflowTrackerConfig:
    """``logger.mlflow``. ``tracking_uri``: null is ``sqlite:///<paths.output_dir>/mlflow.db``,
    a local file that needs no server (MLflow 3 refuses plain-folder stores); or any MLflow
    tracking URI (``http://host:5000``, ``databricks``...). ``experiment_name``: the experiment
    the run joins (created if new). ``artifact_location``: where a new experiment keeps its
    files; null is ``<folder of the SQLite file>/mlartifacts`` for a ``sqlite:`` URI, else the
    tracking server's default."""

    tracking_uri: Optional[str] = None
    experiment_name: str = "aeexp"
    artifact_location: Optional[str] = None


@TRACKERS.register("mlflow", schema=MlflowTrackerConfig)
class MlflowTracker(Tracker):
    """One MLflow run per training run: parameters (the flattened config and the config-group
    choices), per-epoch metrics (the numeric figures, step = epoch), per-step scalars when
    ``trainer.log_every_n_steps`` is set, the training pictures (``images/epoch_<n>/``) and the
    final ``metrics.json``. A resumed run continues its MLflow run (its id is kept in
    ``<run>/mlflow_run.json``)."""

    requires = "mlflow"
    RUN_FILE = "mlflow_run.json"

    def __init__(self, run_dir: Path, tracking_uri: Optional[str] = None, experiment_name: str = "aeexp",
                 artifact_location: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.artifact_location = artifact_location
        self.client = None
        self.run_id: str | None = None
        self.pending: list = []  # mlflow.entities.Metric not yet written

    def start(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or default_tracking_uri(config, self.run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = self._previous_run(uri)
        logged: dict[str, str] = {}
        if self.run_id is None:
            self.run_id = self._new_run(uri, config)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
        params = {k: str(v)[:MLFLOW_PARAM_LENGTH] for k, v in {**flatten_config(config), **group_choices()}.items()}
        # Parameters cannot change in MLflow: a resume that changes one (trainer.epochs) keeps the first value.
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        if new:
            self.client.log_batch(self.run_id, params=new)
        log.info("MLflow run %s in %s", self.run_id, uri)

    def _previous_run(self, uri: str) -> str | None:
        """The run a resumed training run reported to, if it is in this tracking store."""
        try:
            saved = json.loads((self.run_dir / self.RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        if saved.get("tracking_uri") != uri:
            return None
        try:
            return self.client.get_run(saved["run_id"]).info.run_id
        except Exception:  # deleted, or another store: start a new run
            return None

    def _new_run(self, uri: str, config: dict[str, Any]) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = self.artifact_location or default_artifact_location(uri)
            experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        run = self.client.create_run(experiment_id, run_name=run_name(config, self.run_dir),
                                     tags={"run_dir": str(self.run_dir)})
        (self.run_dir / self.RUN_FILE).write_text(json.dumps({"tracking_uri": uri, "run_id": run.info.run_id}) + "\n")
        return run.info.run_id

    def step(self, scalars: dict[str, float], step: int) -> None:
        """Kept until the epoch ends: one write per epoch, however often steps are logged (a
        write to the SQLite store takes tens of milliseconds)."""
        self.pending += self._metrics(scalars, step)

    def epoch(self, metrics: dict[str, Any], step: int, histograms: dict[str, torch.Tensor]) -> None:
        figures = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.pending += self._metrics(figures, step)
        self._flush()

    @staticmethod
    def _metrics(values: dict[str, float], step: int) -> list:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        return [Metric(k, float(v), stamp, step) for k, v in values.items()]

    def _flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)  # MLflow splits it into batches it accepts
        self.pending = []

    def images(self, pictures: dict[str, torch.Tensor], pngs: dict[str, Path], step: int) -> None:
        for png in pngs.values():
            self.client.log_artifact(self.run_id, str(png), artifact_path=f"images/epoch_{step:04d}")

    def finish(self, status: str, metrics: dict[str, Any], config: dict[str, Any]) -> None:
        self._flush()  # the steps of an epoch a signal or a failure cut short
        if (self.run_dir / "metrics.json").is_file():
            self.client.log_artifact(self.run_id, str(self.run_dir / "metrics.json"))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))


def default_tracking_uri(config: dict[str, Any], run_dir: Path) -> str:
    """``sqlite:///<paths.output_dir>/mlflow.db``: every run of the project in one local file
    (``mlflow ui --backend-store-uri`` shows them); without ``paths``, beside the run folder."""
    folder = (config.get("paths") or {}).get("output_dir") or Path(run_dir).resolve().parent
    Path(folder).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def default_artifact_location(uri: str) -> str | None:
    """``<folder of the SQLite file>/mlartifacts`` for a ``sqlite:`` store (MLflow's own default
    is ``./mlruns`` under whatever folder the command was launched from); None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()


def run_name(config: dict[str, Any], run_dir: Path) -> str:
    """The run folder below ``paths.output_dir`` (``2026-01-31/12-00-00``, a sweep job's
    ``multirun/.../3-model=fc``), else the folder's own name."""
    run_dir = Path(run_dir).resolve()
    output_dir = (config.get("paths") or {}).get("output_dir")
    if output_dir:
        try:
            return run_dir.relative_to(Path(output_dir).resolve()).as_posix()
        except ValueError:
            pass
    return run_dir.name


def build_trackers(logger: Any, run_dir: Path) -> list[Tracker]:
    """The trackers a checked ``logger`` node names (None: :data:`DEFAULT_LOGGER`), in its order."""
    node = DEFAULT_LOGGER if logger is None else logger
    return [TRACKERS.build({"name": name, **(options or {})}, run_dir=run_dir) for name, options in node.items()]
