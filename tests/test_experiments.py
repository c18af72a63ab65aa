"""Every experiment in conf/experiment/ composes, validates and trains: one short epoch per
stage on tiny synthetic data (debug=fast), with the experiment's own model, sparsity, noise,
optimizer, scheduler and stages (only the data, the sizes and the epoch count are overridden)."""

from __future__ import annotations

import json
import math

import pytest

from aeexp.config import validate
from aeexp.training.run import run_training
from aeexp.training.stages import plan_stages
from conftest import CONF_DIR, compose

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
TINY = (
    "dataset=synthetic",
    "dataset.num_train=256",
    "dataset.num_val=64",
    "trainer.batch_size=64",
    "debug=fast",  # one epoch per stage, 4 training batches, 1 validation batch, no pictures
    "trainer.progress=false",
    "device=cpu",
)
# The inner loop (pytest -m "not slow") trains one experiment of each kind: noise, sparsity. The
# others have theirs elsewhere: stages in test_stages.py's layerwise_run (deep_fc_layerwise, one
# epoch a stage), conv in test_conv.py (model=conv, its conv32 settings composed and checked).
INNER_LOOP = {"denoise_gaussian", "topk5"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in INNER_LOOP else pytest.mark.slow)
                                  for name in EXPERIMENTS])
def test_every_experiment_trains_one_short_epoch_per_stage(name, tmp_path):
    overrides = (f"experiment={name}", *TINY)
    full = validate(compose(f"experiment={name}", "dataset=synthetic"))
    cfg = validate(compose(*overrides))
    # Only the overridden keys changed: the recipe itself is what trains.
    for group in ("model", "sparsity", "noise", "optimizer", "scheduler"):
        assert cfg[group] == full[group], group
    assert cfg.trainer.stages == full.trainer.stages
    stages = plan_stages(cfg)
    assert all(stage.epochs == 1 for stage in stages)

    metrics = run_training(cfg, tmp_path / name)

    assert metrics["status"] == "completed"
    assert metrics["stages"] == len(stages) and metrics["stage"] == len(stages)
    assert metrics["epoch"] == len(stages)  # one epoch in each stage
    assert metrics["tags"] == ["debug"]
    assert math.isfinite(metrics["val_mse"]) and math.isfinite(metrics["best_val_mse"])
    assert (tmp_path / name / "checkpoints" / "best.pt").exists()
    assert json.loads((tmp_path / name / "metrics.json").read_text())["status"] == "completed"


def test_the_inner_loop_experiments_exist():
    assert INNER_LOOP <= set(EXPERIMENTS)


def test_the_readme_maps_every_experiment():
    readme = (CONF_DIR.parent / "README.md").read_text()
    section = readme.split("## Experiments", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in EXPERIMENTS if f"`{name}`" not in section]
    assert not missing, f"README's experiment table lacks {missing}"
