"""What aeexp writes to TensorBoard, read back through TensorBoard's own event reader:
per-step scalars (``trainer.log_every_n_steps``), the HParams entry (config-group choices),
and README.md's table of every tag (a run's and an evaluation's tags are all in it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hydra
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from omegaconf import OmegaConf

from aeexp.config import ConfigError, validate
from aeexp.evaluation import check_settings, evaluate_run
from aeexp.evaluation.sweep_pictures import PNG_NAMES
from aeexp.hparams import write_evaluation_hparams
from aeexp.training.run import run_training
from conftest import CONF_DIR, REPO, SMALL_RUN, event_scalars, small_run

STEPS_PER_EPOCH = 8  # small_run: 512 training images in batches of 64


def step_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    return {tag: values for tag, values in event_scalars(run_dir).items() if tag.startswith("step/")}


def test_per_step_scalars_every_n_steps_keyed_by_global_step(tmp_path):
    run_training(small_run("trainer.epochs=2", "trainer.log_every_n_steps=3", "sparsity=l1"), tmp_path)
    found = step_scalars(tmp_path)
    assert set(found) == {"step/train_loss", "step/train_mse", "step/train_penalty", "step/lr"}  # l1: no aux
    for values in found.values():
        assert sorted(values) == [3, 6, 9, 12, 15]  # 16 optimizer steps in all
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert found["step/lr"][15] == pytest.approx(metrics["lr"])
    for step in found["step/train_loss"]:
        loss, mse, penalty = (found[f"step/train_{k}"][step] for k in ("loss", "mse", "penalty"))
        assert loss == pytest.approx(mse + penalty, rel=1e-5) and penalty > 0


def test_per_step_scalars_continue_exactly_on_resume(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    every = ("trainer.log_every_n_steps=3",)
    run_training(small_run("trainer.epochs=2", *every), whole)
    run_training(small_run("trainer.epochs=1", *every), split)
    assert sorted(step_scalars(split)["step/train_loss"]) == [3, 6]
    run_training(small_run("trainer.epochs=2", "trainer.resume=true", *every), split)
    assert step_scalars(split) == step_scalars(whole)  # the same steps, the same values, none twice


def test_log_every_n_steps_is_null_or_positive():
    assert validate(small_run()).trainer.log_every_n_steps is None
    with pytest.raises(ConfigError, match="trainer.log_every_n_steps: got 0"):
        validate(small_run("trainer.log_every_n_steps=0"))


# ------------------------------------------------------------------------------- HParams
def hparams(run_dir: Path) -> dict[str, object]:
    """The hyperparameters of the run's HParams session, as TensorBoard's hparams plugin reads them."""
    events = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))))
    events.Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}


def train_as_hydra_would(run_dir: Path, *overrides: str) -> None:
    """run_training inside the Hydra context train.py runs in (HydraConfig set, the task
    config without its ``hydra`` node), as Hydra's run_job does for a run or a sweep job."""
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra.compose("config", overrides=[*SMALL_RUN, *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        run_training(cfg, run_dir)
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def hydra_run(tmp_path_factory) -> Path:
    """A run that writes nearly every tag: per-step scalars, noise, a penalty, every picture
    (2-D codes: the scatter too), evaluated afterwards."""
    run_dir = tmp_path_factory.mktemp("tags") / "run"
    train_as_hydra_would(run_dir, "trainer.epochs=1", "sparsity=l1", "noise=gaussian", "scheduler=cosine",
                         "model.latent_dim=2", "trainer.image_every=1", "trainer.log_every_n_steps=3")
    fast = ("probe_max_iter=30", "labels_per_class=[5]", "head_steps=20", "progress=false", "noise_levels=[0.2]")
    metrics = evaluate_run(run_dir, check_settings(OmegaConf.from_dotlist(list(fast))), "cpu")
    write_evaluation_hparams(run_dir, metrics)  # as evaluate.py does after each run
    return run_dir


def test_hparams_carry_the_config_group_choices(hydra_run):
    found = hparams(hydra_run)
    assert {k: found.get(k) for k in ("model", "sparsity", "noise", "dataset", "optimizer", "scheduler")} == {
        "model": "fc", "sparsity": "l1", "noise": "gaussian", "dataset": "synthetic", "optimizer": "adam",
        "scheduler": "cosine"}
    assert found["model.name"] == "fc" and found["sparsity.weight"] > 0  # the config's own values stay
    assert not any(k.startswith("hydra") or k.startswith("paths") for k in found)
    assert "experiment" not in found and "debug" not in found  # groups left unchosen


def test_without_hydra_hparams_have_the_config_only_and_no_per_step_scalars_by_default(tmp_path):
    run_training(small_run("trainer.epochs=1"), tmp_path)
    found = hparams(tmp_path)
    assert found["model.name"] == "fc" and "model" not in found
    assert step_scalars(tmp_path) == {}


# ------------------------------------------------------------------------- README's table
def readme_tag_patterns() -> list[re.Pattern]:
    """The tags in the first column of README.md's TensorBoard table; ``<name>`` stands for
    one path component (``hparam/<metric>``)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## TensorBoard\n"):]
    section = section[:section.index("\n## ", 1)]
    patterns = []
    for line in section.splitlines():
        if line.startswith("| `"):
            for tag in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
                patterns.append(re.compile(re.sub(r"<[^>]+>", "[^/]+", re.escape(tag).replace(r"\<", "<")
                                                  .replace(r"\>", ">")) + r"\Z"))
    return patterns


def every_tag(run_dir: Path) -> set[str]:
    """Every tag of every event file under ``run_dir`` (training's and evaluate.py's), HParams plugin data included."""
    tags = set()
    for path in run_dir.rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(path))
        events.Reload()
        tags.update(t for kind in events.Tags().values() if isinstance(kind, list) for t in kind)
        try:
            tags.update(events.PluginTagToContent(hparams_metadata.PLUGIN_NAME))
        except KeyError:  # no HParams session in this file (evaluate.py's)
            pass
    return tags


def test_readme_documents_every_tag_a_run_and_its_evaluation_write(hydra_run):
    patterns = readme_tag_patterns()
    tags = every_tag(hydra_run)
    assert {"step/train_loss", "step/train_penalty", "perf/epoch_seconds", "hparam/best_score", "val/denoise_mse",
            "latent_scatter", "eval/test_mse", "eval/latent_scatter", "_hparams_/session_start_info"} <= tags
    undocumented = sorted(t for t in tags if not any(p.match(t) for p in patterns))
    assert not undocumented, f"tags missing from README.md's TensorBoard table: {undocumented}"
    assert not any(p.match("no/such_tag") for p in patterns)


def test_readme_documents_the_sweep_pictures_tags():
    """``evaluate.py`` on a multirun directory: ``sweep/<name>`` images in ``<multirun>/comparison/``
    (tests/test_sweep_pictures.py reads them back from the event file)."""
    patterns = readme_tag_patterns()
    undocumented = sorted(t for t in (f"sweep/{name}" for name in PNG_NAMES) if not any(p.match(t) for p in patterns))
    assert not undocumented, f"tags missing from README.md's TensorBoard table: {undocumented}"
