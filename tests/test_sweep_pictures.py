"""A sweep's pictures (aeexp/evaluation/sweep_pictures.py) and its evaluation figures in
TensorBoard's HParams tab (aeexp/hparams.py), read back the way TensorBoard reads them.

The inner loop checks what each picture shows (its data, from fake multirun directories: the
files a Hydra job leaves, TensorBoard scalars written by hand, a fake evaluation) and the HParams
rows; the slow tests draw the pictures, one of them for a real 2 x 2 sweep trained and evaluated
through evaluate.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter

from aeexp.evaluation.sweep_pictures import (
    PNG_NAMES, frontier_points, grid_of, heatmap_cells, pareto_front, validation_curves, write_sweep_pictures,
)
from aeexp.evaluation.sweep_table import compare_runs
from aeexp.hparams import EVALUATION_METRICS, write_evaluation_hparams
from aeexp.training.tensorboard import write_hparams
from conftest import CONF_DIR, REPO, SMALL_RUN


# ------------------------------------------------------------------------- Pareto front
def test_pareto_front_of_a_hand_made_set():
    points = [(1, 5), (2, 3), (3, 3), (2, 4), (4, 1), (5, 1), (4, 1), (0.5, 9), (6, 0.5), (3, 2.5)]
    # (3, 3) and (2, 4) lose to (2, 3); (5, 1) to (4, 1); the two equal (4, 1) are both on the front
    assert pareto_front(points) == [True, True, False, False, True, False, True, True, True, True]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [True]


def test_pareto_front_agrees_with_a_sweep_over_x():
    """Against the textbook algorithm: sorted by x (then y), a point is on the front when its y
    is below every y seen at a smaller x, or equal to the best one at its own x and y."""
    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(rng.randint(1, 12))]
        best_y, front = math.inf, set()
        for x, y in sorted(set(points)):
            if y < best_y:
                front.add((x, y))
                best_y = y
        assert pareto_front(points) == [p in front for p in points], points


# ------------------------------------------------------------------------------ heatmap
def test_a_heatmap_only_for_two_keys_on_a_grid():
    rows = [{"a": a, "b": b, "score": float(i)} for i, (a, b) in enumerate(
        [("10", "x"), ("9", "x"), ("10", "y"), ("9", "y"), ("0.5", "x")])]
    rows_values, column_values, values = heatmap_cells(rows, ["a", "b"], "score")
    assert rows_values == ["0.5", "9", "10"] and column_values == ["x", "y"]  # numbers in numeric order
    assert values[1:] == [[1.0, 3.0], [0.0, 2.0]]
    assert values[0][0] == 4.0 and math.isnan(values[0][1])  # no run for a=0.5, b=y: an empty cell
    assert "varies 3 override key(s)" in heatmap_cells(rows, ["a", "b", "c"], "score")
    assert "varies 1 override key(s) (a)" in grid_of(rows, ["a"])
    assert "not one grid" in grid_of(rows + [{"a": "9", "b": "x", "score": 7.0}], ["a", "b"])


# ----------------------------------------------------------------- fake multirun sweeps
def fake_job(root: Path, job: str, overrides: dict[str, str], curve: list[float], config: dict | None = None) -> Path:
    """What a Hydra job leaves that the pictures read: overrides, metrics.json, ``val/mse`` per epoch."""
    run = root / job
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {"sparsity": {"name": "l1", "weight": 0.1}}))
    (run / "metrics.json").write_text(json.dumps({"monitor": "val_mse", "epoch": len(curve), "best_score": min(curve),
                                                  "best_epoch": curve.index(min(curve)) + 1}))
    writer = SummaryWriter(log_dir=str(run))
    for epoch, value in enumerate(curve, 1):
        writer.add_scalar("val/mse", value, epoch)
    writer.close()
    return run


# job -> (latent_dim, sparsity.weight, val/mse per epoch, test_l0, test_mse, test_fvu)
GRID = {"0": ("4", "0.1", [0.5, 0.3, 0.2], 2.0, 0.21, 0.9), "1": ("4", "0.01", [0.4, 0.2, 0.15], 3.0, 0.16, 0.7),
        "2": ("8", "0.1", [0.3, 0.2, 0.1], 3.0, 0.12, 0.5), "3": ("8", "0.01", [0.3, 0.1, 0.05], 6.0, 0.05, 0.2)}


def fake_sweep(root: Path, kind: str = "images", extra_key: bool = False) -> tuple[list[str], list[dict]]:
    for job, (dim, weight, curve, *_) in GRID.items():
        overrides = {"dataset": "synthetic", "model.latent_dim": dim, "sparsity.weight": weight}
        if extra_key:
            overrides["seed"] = job
        fake_job(root, job, overrides, curve)

    def evaluate(run: Path) -> dict:
        _, _, curve, l0, mse, fvu = GRID[run.name]
        if run.name == "2" and kind == "failed":
            raise RuntimeError("no best.pt")
        return {"val_mse": min(curve), "test_l0": l0, "test_mse": mse, "test_fvu": fvu,
                **({"kind": "vectors"} if kind == "vectors" else {})}
    return compare_runs(root, evaluate, (RuntimeError,))


def test_curves_frontier_and_heatmap_figures_of_a_fake_sweep(tmp_path):
    _, runs = fake_sweep(tmp_path)
    identity = ["model.latent_dim", "sparsity.weight"]
    key, curves = validation_curves(tmp_path, runs, identity, "val_mse")
    assert key == "val_mse"
    assert curves["model.latent_dim=4 sparsity.weight=0.1"] == pytest.approx({1: 0.5, 2: 0.3, 3: 0.2})
    assert len(curves) == 4
    # a run trained with logger=csv only: its curve from metrics.csv (one row per epoch)
    for events in (tmp_path / "0").glob("events.out.tfevents.*"):
        events.unlink()
    (tmp_path / "0" / "metrics.csv").write_text("epoch,val_mse,val_l0\n1,0.75,3\n2,0.625,3\n")
    _, curves = validation_curves(tmp_path, runs, identity, "val_mse")
    assert curves["model.latent_dim=4 sparsity.weight=0.1"] == {1: 0.75, 2: 0.625}

    x_key, y_key, points, labels = frontier_points(tmp_path, runs, identity)
    assert (x_key, y_key) == ("test_l0", "test_mse")
    by_label = dict(zip(labels, points))
    assert by_label["model.latent_dim=8 sparsity.weight=0.01"] == (6.0, 0.05)
    front = {label for label, on in zip(labels, pareto_front(points)) if on}
    # (3, 0.16) loses to (3, 0.12); the others each win on one axis
    assert front == {"model.latent_dim=4 sparsity.weight=0.1", "model.latent_dim=8 sparsity.weight=0.1",
                     "model.latent_dim=8 sparsity.weight=0.01"}

    rows_values, column_values, values = heatmap_cells(runs, identity, "selection_score")
    assert (rows_values, column_values) == (["4", "8"], ["0.01", "0.1"])
    assert values == [[0.15, 0.2], [0.05, 0.1]]  # each run's best val/mse, the score that selected best.pt


def test_vectors_plot_fvu_and_without_l0_the_sparsity_weight(tmp_path):
    _, rows = fake_sweep(tmp_path, kind="vectors")
    x_key, y_key, points, _ = frontier_points(tmp_path, rows, [])
    assert (x_key, y_key) == ("test_l0", "test_fvu") and sorted(p[1] for p in points) == [0.2, 0.5, 0.7, 0.9]
    rows[0].pop("test_l0")
    x_key, _, points, labels = frontier_points(tmp_path, rows, [])
    assert x_key == "sparsity.weight" and [p[0] for p in points] == [0.1] * 4  # from each run's config.yaml
    assert sorted(labels) == ["0", "1", "2", "3"]  # nothing varied to name them by: their folders
    _, _, _, labels = frontier_points(tmp_path, rows, ["selected_by"])  # the same label for all: folders added
    assert sorted(labels) == [f"selected_by=val_mse ({job})" for job in "0123"]


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def tensorboard_images(folder: Path) -> dict[str, tuple[int, int]]:
    """tag -> (width, height) of every image in the folder's event files, as TensorBoard reads them."""
    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    return {tag: (events.Images(tag)[-1].width, events.Images(tag)[-1].height) for tag in events.Tags()["images"]}


@pytest.mark.slow  # ~1 s of drawing; the inner loop checks what each picture shows (the tests above)
def test_pngs_and_tensorboard_images_of_a_fake_sweep(tmp_path):
    """Every picture in both places, the same size (a failed run is left out of them)."""
    columns, rows = fake_sweep(tmp_path, kind="failed")
    written = write_sweep_pictures(tmp_path, columns, rows)
    assert [p.name for p in written] == list(PNG_NAMES.values())
    images = tensorboard_images(tmp_path / "comparison")
    assert set(images) == {f"sweep/{name}" for name in PNG_NAMES}
    for name, png in PNG_NAMES.items():
        assert png_size(tmp_path / png) == images[f"sweep/{name}"]


@pytest.mark.slow  # draws pictures; the inner loop checks heatmap_cells' reason for a 3-key sweep
def test_no_heatmap_for_three_keys_one_log_line_and_an_earlier_heatmap_removed(tmp_path, caplog):
    columns, rows = fake_sweep(tmp_path, extra_key=True)
    (tmp_path / PNG_NAMES["selection_heatmap"]).write_bytes(b"stale")
    with caplog.at_level(logging.INFO, logger="aeexp.evaluation.sweep_pictures"):
        written = write_sweep_pictures(tmp_path, columns, rows)
    assert [p.name for p in written] == [PNG_NAMES["validation_curves"], PNG_NAMES["frontier"]]
    assert not (tmp_path / PNG_NAMES["selection_heatmap"]).exists()
    assert set(tensorboard_images(tmp_path / "comparison")) == {"sweep/validation_curves", "sweep/frontier"}
    reasons = [r.getMessage() for r in caplog.records if "heatmap" in r.getMessage()]
    assert reasons == ["sweep pictures: no heatmap: the sweep varies 3 override key(s) (model.latent_dim, "
                       "sparsity.weight, seed), a heatmap needs exactly 2"]


# ------------------------------------------------------------------------------ HParams
def hparams_table(logdir: Path) -> list[api_pb2.SessionGroup]:
    """The HParams tab's rows, as TensorBoard's hparams plugin computes them for ``logdir``."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=multiplexer))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    response = list_session_groups.Handler(tb_context.RequestContext(), backend, "", request).run()
    return list(response.session_groups)


def metric_values(group: api_pb2.SessionGroup) -> dict[str, float]:
    return {f"{m.name.group}:{m.name.tag}" if m.name.group else m.name.tag: m.value for m in group.metric_values}


def experiment_record(folder: Path) -> api_pb2.Experiment:
    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.EXPERIMENT_TAG]
    return hparams_metadata.parse_experiment_plugin_data(content)


def test_evaluation_figures_join_the_training_session_as_one_row(tmp_path):
    """Two runs, HParams as training writes them, then evaluation's scalars and record: one row
    (one session) per run, training's and evaluation's figures in it; ``ssl5_frozen``, outside the
    list training names, is in the evaluation's own experiment record."""
    evaluated = {"a": {"test_mse": 0.25, "probe_accuracy": 0.75, "ssl5_frozen": 0.5, "val_mse": 0.125,
                       "test_images": 512, "kind": "images"},
                 "b": None}  # not evaluated yet
    for name, metrics in evaluated.items():
        run = tmp_path / name
        with SummaryWriter(log_dir=str(run)) as writer:
            write_hparams(writer, {"model": {"name": "fc", "latent_dim": 4 if name == "a" else 8}},
                          {"best_score": 0.5 if name == "a" else 0.375}, {"model": "fc"})
        if metrics:
            with SummaryWriter(log_dir=str(run / "eval")) as writer:  # as evaluate_run logs its figures
                for key, value in metrics.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"eval/{key}", value, 3)
            assert write_evaluation_hparams(run, metrics) == run / "eval"
    groups = {g.name: g for g in hparams_table(tmp_path)}
    assert set(groups) == {"a", "b"} and all(len(g.sessions) == 1 for g in groups.values())
    assert groups["a"].hparams["model.latent_dim"].number_value == 4 and groups["a"].hparams["model"].string_value == "fc"
    assert metric_values(groups["a"]) == {"hparam/best_score": 0.5, "eval:eval/test_mse": 0.25,
                                          "eval:eval/probe_accuracy": 0.75, "eval:eval/val_mse": 0.125}
    assert metric_values(groups["b"]) == {"hparam/best_score": 0.375}

    training = experiment_record(tmp_path / "a")
    names = {(m.name.group, m.name.tag) for m in training.metric_infos}
    assert names == {("", "hparam/best_score"), *(("eval", f"eval/{k}") for k in EVALUATION_METRICS)}
    evaluation = experiment_record(tmp_path / "a" / "eval")
    assert {(m.name.group, m.name.tag) for m in evaluation.metric_infos} == names | {("eval", "eval/ssl5_frozen")}
    assert [h.name for h in evaluation.hparam_infos] == [h.name for h in training.hparam_infos]
    assert "test_images" not in str(evaluation)  # a count, not a figure to compare runs by


def test_no_evaluation_record_for_a_run_training_left_without_a_session(tmp_path, caplog):
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        writer.add_scalar("val/mse", 0.5, 1)  # stopped before its last epoch: no HParams yet
    with caplog.at_level(logging.INFO, logger="aeexp.hparams"):
        assert write_evaluation_hparams(tmp_path, {"test_mse": 0.25}) is None
    assert not (tmp_path / "eval").exists()
    assert "training wrote no HParams session" in caplog.text


# ------------------------------------------------------------------ a real sweep, end to end
def train_job(run_dir: Path, *overrides: str) -> None:
    """One job of a sweep as ``train.py -m`` runs it: the Hydra context set (so HParams get the
    config-group choices) and ``.hydra/`` written once the run is accepted."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from aeexp.training.run import run_training
    from aeexp.training.run_dir import write_hydra_files

    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra.compose("config", overrides=[*SMALL_RUN, *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        hydra_cfg = cfg.hydra
        with open_dict(cfg):
            del cfg["hydra"]
        run_training(cfg, run_dir, on_start=lambda: write_hydra_files(run_dir, cfg, hydra_cfg))
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


@pytest.mark.slow  # trains and evaluates four runs; the inner loop covers each part on fake sweeps above
def test_a_real_sweep_gets_its_pictures_and_one_hparams_row_per_run_with_test_figures(tmp_path):
    sweep = tmp_path / "multirun"
    jobs = [(dim, weight) for dim in (4, 8) for weight in ("0.001", "0.01")]
    for i, (dim, weight) in enumerate(jobs):
        train_job(sweep / str(i), "trainer.epochs=2", "sparsity=l1", f"model.latent_dim={dim}",
                  f"sparsity.weight={weight}", "trainer.image_every=0")
    spec = importlib.util.spec_from_file_location("evaluate_entry", REPO / "evaluate.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    cfg = OmegaConf.create({"run_dir": str(sweep), "dataset_root": None, "device": {"name": "cpu"}, "eval": {
        "probe_max_iter": 30, "labels_per_class": [5], "head_steps": 20, "progress": False, "noise_levels": [0.2]}})
    assert entry.evaluate(cfg) == 0

    images = tensorboard_images(sweep / "comparison")
    for name, png in PNG_NAMES.items():
        assert png_size(sweep / png) == images[f"sweep/{name}"]

    groups = {g.name: g for g in hparams_table(sweep)}
    assert set(groups) == {"0", "1", "2", "3"} and all(len(g.sessions) == 1 for g in groups.values())
    for i, (dim, weight) in enumerate(jobs):
        group = groups[str(i)]
        assert group.hparams["model.latent_dim"].number_value == dim
        assert group.hparams["sparsity.weight"].number_value == pytest.approx(float(weight))
        assert group.hparams["sparsity"].string_value == "l1"  # the config-group choice
        evaluation = json.loads((sweep / str(i) / "eval" / "metrics.json").read_text())
        training = json.loads((sweep / str(i) / "metrics.json").read_text())
        values = metric_values(group)
        for key in ("test_mse", "test_l0", "mse_vs_pca", "probe_accuracy", "knn_accuracy"):
            assert values[f"eval:eval/{key}"] == pytest.approx(evaluation[key], rel=1e-6), key
        assert values["hparam/best_score"] == pytest.approx(training["best_score"], rel=1e-6)
        record = experiment_record(sweep / str(i) / "eval")
        assert ("eval", "eval/ssl5_fine_tuned") in {(m.name.group, m.name.tag) for m in record.metric_infos}
