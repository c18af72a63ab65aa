"""A loaded run can never run code or touch files.

A checkpoint is data; a ``_target_`` in the config it carries is code to import and call.
Each test below crafts a ``best.pt`` the way an attacker would (a real run's checkpoint
with its config or pickle rewritten), evaluates it the way a user does, and checks that
evaluation stops with one line of ours, that the victim file is unchanged byte for byte,
and that no file appeared or changed anywhere in the test's folder. With
``eval.trust_targets=true`` a ``_target_`` is built, after a warning naming it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from aeexp.evaluation import check_settings, load_run
from aeexp.sparsity import Sparsity
from aeexp.checkpoints import CheckpointError, load_checkpoint
from aeexp.training.run import run_training
from aeexp.trust import UntrustedConfigError, find_targets, guard_loaded_config, settle_loaded_config
from conftest import (BEST, CONF_DIR, PICKLES, REPO, YAML_TAGS, copy_payload, small_run, stored_config,
                      write_config, write_config_text)

VICTIM_TEXT = b"precious data that a checkpoint must never overwrite\n"


# ------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trusted") / "run"
    run_training(small_run("trainer.epochs=1", "trainer.image_every=0"), run_dir)
    return run_dir


@pytest.fixture
def site(tmp_path, trained) -> dict[str, Path]:
    """A copy of the real run and a victim file beside it, in this test's own folder."""
    run_dir = Path(shutil.copytree(trained, tmp_path / "run"))
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM_TEXT)
    return {"root": tmp_path, "run": run_dir, "victim": victim, "created": tmp_path / "created.txt"}


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder below ``folder``: content hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns))
        if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


# Each route puts a payload somewhere in the stored config; the payload either empties the
# victim (copyfile /dev/null -> victim) or creates a new file (copyfile victim -> created).
def route_model(cfg, site):
    # Nested, so that Hydra's recursive instantiate calls it before the outer target gets
    # the model's keyword arguments.
    cfg["model"] = {"_target_": "builtins.dict", "payload": copy_payload(os.devnull, site["victim"])}


def route_sparsity(cfg, site):
    cfg["sparsity"] = copy_payload(os.devnull, site["victim"])


def route_noise(cfg, site):
    cfg["noise"] = copy_payload(site["victim"], site["created"])


def route_dataset(cfg, site):  # the issue's example
    cfg["dataset"] = copy_payload(os.devnull, site["victim"])


def route_optimizer(cfg, site):
    cfg["optimizer"] = copy_payload(os.devnull, site["victim"])


def route_stage_optimizer(cfg, site):  # inside a list, inside the trainer group
    cfg["trainer"]["stages"] = [{"epochs": 1, "optimizer": copy_payload(os.devnull, site["victim"])}]


def route_interpolation(cfg, site):  # a resolver that builds the node only when it is read
    cfg["sparsity"] = f"${{oc.create:'{{_target_: shutil.copyfile, _args_: [{os.devnull}, {site['victim']}]}}'}}"


def route_escaped_interpolation(cfg, site):  # resolves to an interpolation, which resolves to a target
    cfg["trainer"]["stages"] = [{"epochs": 1, "optimizer": {"lr": "\\${oc.create:'" + yaml.safe_dump(
        copy_payload(os.devnull, site["victim"]), default_flow_style=True).strip() + "'}"}}]


TARGET_ROUTES = {
    "model": (route_model, "model._target_: builtins.dict"),
    "sparsity": (route_sparsity, "sparsity._target_: shutil.copyfile"),
    "noise": (route_noise, "noise._target_: shutil.copyfile"),
    "dataset": (route_dataset, "dataset._target_: shutil.copyfile"),
    "optimizer": (route_optimizer, "optimizer._target_: shutil.copyfile"),
    "stage_optimizer": (route_stage_optimizer, "trainer.stages[0].optimizer._target_: shutil.copyfile"),
    "interpolation": (route_interpolation, "sparsity._target_: shutil.copyfile"),
    "escaped_interpolation": (route_escaped_interpolation, "trainer.stages[0].optimizer.lr._target_: shutil.copyfile"),
}


def yaml_tag_text(site, tag_value: str) -> str:
    cfg = stored_config(site["run"])
    del cfg["dataset"]
    return yaml.safe_dump(cfg, sort_keys=False) + f"dataset: {tag_value}\n"


def write_pickle_payload(site, kind: str) -> None:
    state = torch.load(site["run"] / BEST, weights_only=True)
    state["extra"] = PICKLES[kind](site)
    torch.save(state, site["run"] / BEST)


def entry_point():
    spec = importlib.util.spec_from_file_location("evaluate_entry", REPO / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_in_process(run_dir: Path, *settings: str) -> str:
    """What ``python evaluate.py run_dir=<run_dir> device=cpu <settings>`` raises, as its one line."""
    entry = entry_point()
    cfg = OmegaConf.create({"run_dir": str(run_dir), "dataset_root": None, "device": {"name": "cpu"},
                            "eval": OmegaConf.from_dotlist(["progress=false", *settings])})
    with pytest.raises(entry.ERRORS) as error:
        entry.evaluate(cfg)
    return str(error.value)


def evaluate_py(run_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AEEXP_DATA", "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={run_dir}", "device=cpu"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_untouched(site, before: dict[str, str]) -> None:
    assert site["victim"].read_bytes() == VICTIM_TEXT
    assert not site["created"].exists()
    assert tree(site["root"]) == before
    assert not (site["run"] / "eval").exists()


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


# ------------------------------------------------------------------ _target_ routes
@pytest.mark.parametrize("route", list(TARGET_ROUTES))
def test_target_in_a_loaded_config_is_refused_and_runs_nothing(site, route):
    craft, named = TARGET_ROUTES[route]
    cfg = stored_config(site["run"])
    craft(cfg, site)
    write_config(site["run"], cfg)
    before = tree(site["root"])
    message = evaluate_in_process(site["run"])
    assert_one_line(message)
    assert str(site["run"] / BEST) in message and named in message, message
    assert "eval.trust_targets=true" in message
    assert_untouched(site, before)


@pytest.mark.slow
def test_the_issue_example_through_evaluate_py(site):
    """``dataset: {_target_: shutil.copyfile, _args_: [/dev/null, <victim>]}``, as a user runs it."""
    cfg = stored_config(site["run"])
    route_dataset(cfg, site)
    write_config(site["run"], cfg)
    before = tree(site["root"])
    result = evaluate_py(site["run"], cwd=site["root"])
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in output
    assert len(lines) == 1 and "dataset._target_: shutil.copyfile" in lines[0], output
    assert "eval.trust_targets=true" in lines[0]
    assert_untouched(site, before)


# ------------------------------------------------------------------------ YAML tags
@pytest.mark.parametrize("tag", list(YAML_TAGS))
def test_python_yaml_tags_build_nothing(site, tag):
    write_config_text(site["run"], yaml_tag_text(site, YAML_TAGS[tag](site)))
    before = tree(site["root"])
    message = evaluate_in_process(site["run"])
    assert_one_line(message)
    assert str(site["run"] / BEST) in message and "!!python/" in message, message
    assert_untouched(site, before)


# --------------------------------------------------------------------------- pickles
@pytest.mark.parametrize("kind", list(PICKLES))
def test_code_running_pickle_is_refused_in_our_words(site, kind):
    write_pickle_payload(site, kind)
    before = tree(site["root"])
    for message in (evaluate_in_process(site["run"]), str(pytest.raises(CheckpointError, load_checkpoint,
                                                                          site["run"] / BEST).value)):
        assert_one_line(message)
        assert "contains Python objects other than tensors and plain values" in message, message
        assert "aeexp refuses to load it" in message
        assert "weights_only" not in message and "add_safe_globals" not in message
    assert_untouched(site, before)


@pytest.mark.slow
def test_code_running_pickle_through_evaluate_py(site):
    write_pickle_payload(site, "copyfile")
    before = tree(site["root"])
    result = evaluate_py(site["run"], cwd=site["root"])
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in output
    assert len(lines) == 1 and "aeexp refuses to load it" in lines[0], output
    assert "weights_only" not in output and "trusted source" not in output
    assert_untouched(site, before)


def test_damaged_checkpoints_keep_their_own_message(site):
    best = site["run"] / BEST
    data = best.read_bytes()
    for broken in (data[: len(data) // 2], b"not a checkpoint at all\n" * 100, b""):
        best.write_bytes(broken)
        message = str(pytest.raises(CheckpointError, load_checkpoint, best).value)
        assert_one_line(message)
        assert "cannot be read (truncated or corrupted?)" in message and "weights_only" not in message, message


# ---------------------------------------------------------------------- the opt-in
class RecordingSparsity(Sparsity):
    """A harmless user class: counts how often it is built."""

    built = 0

    def __init__(self):
        super().__init__()
        RecordingSparsity.built += 1


def test_trust_targets_builds_a_target_after_naming_it(site, caplog):
    cfg = stored_config(site["run"])
    cfg["sparsity"] = {"_target_": f"{__name__}.RecordingSparsity"}
    write_config(site["run"], cfg)
    built = RecordingSparsity.built
    with pytest.raises(UntrustedConfigError, match=rf"sparsity\._target_: {__name__}\.RecordingSparsity"):
        load_run(site["run"])
    assert RecordingSparsity.built == built
    with caplog.at_level(logging.WARNING, logger="aeexp.trust"):
        run = load_run(site["run"], trust_targets=True)
    assert RecordingSparsity.built == built + 1
    assert isinstance(run.model.bottleneck, RecordingSparsity)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "aeexp.trust"]
    assert f"sparsity._target_: {__name__}.RecordingSparsity" in warning.getMessage()
    assert str(site["run"] / BEST) in warning.getMessage()


def test_trust_targets_is_an_eval_setting_off_by_default():
    assert check_settings(OmegaConf.load(CONF_DIR / "eval.yaml").eval).trust_targets is False
    assert check_settings(OmegaConf.create({"trust_targets": True})).trust_targets is True


# ------------------------------------------------------------------- the walk itself
def test_find_targets_walks_every_group_list_and_depth():
    cfg = OmegaConf.create({
        "model": {"name": "fc", "encoder": [{"out_features": 8}, {"x": {"_target_": "a.b"}}]},
        "trainer": {"stages": [{"optimizer": {"_target_": "c.d", "inner": {"_target_": "e.f"}}}]},
        "seed": 0,
    })
    assert find_targets(cfg) == [("model.encoder[1].x._target_", "a.b"), ("trainer.stages[0].optimizer._target_", "c.d"),
                                 ("trainer.stages[0].optimizer.inner._target_", "e.f")]
    assert find_targets(OmegaConf.create({"model": {"name": "fc"}})) == []


def test_settled_config_has_no_interpolation_left(tmp_path):
    source = tmp_path / "best.pt"
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "c": "\\${a}", "d": "\\\\${a}"})
    settled = settle_loaded_config(cfg, source)
    plain = OmegaConf.to_container(settled, resolve=False)
    assert plain == OmegaConf.to_container(settled, resolve=True) == {"a": 1, "b": 1, "c": 1, "d": "\\1"}
    with pytest.raises(CheckpointError, match="cannot be resolved"):
        settle_loaded_config(OmegaConf.create({"a": "${nosuch}"}), source)
    with pytest.raises(UntrustedConfigError):
        guard_loaded_config(OmegaConf.create({"a": {"_target_": "x.y"}}), source, trust=False)
