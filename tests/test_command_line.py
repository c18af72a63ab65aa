"""``aeexp.cli.check_command_line``: Hydra's silent or many-line refusals as one ConfigError,
and never a refusal of a command line Hydra and ``validate`` would accept."""

from __future__ import annotations

import shlex

import pytest

from aeexp.cli import check_command_line
from aeexp.config import ConfigError, validate
from conftest import CONF_DIR, compose

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

ACCEPTED = [
    "",
    "dataset=fashion_mnist trainer.epochs=20",
    "dataset=fashion_mnist model=mlp model.latent_dim=16 optimizer=adamw optimizer.lr=3e-4",
    "dataset=fashion_mnist sparsity=topk sparsity.k=16",
    "dataset=fashion_mnist model.tied=true",
    "-m dataset=fashion_mnist sparsity=topk,lifetime,l1,kl model.latent_dim=32,64",
    "-m hydra/launcher=joblib hydra.launcher.n_jobs=2 trainer.num_threads=1 sparsity=topk,l1",
    "-m hparams_search=optuna dataset=fashion_mnist trainer.epochs=5 hydra.sweeper.n_trials=20",
    "-m experiment=search_l1 dataset=fashion_mnist trainer.epochs=5 hydra.sweeper.n_trials=20",
    "-m experiment=search_l1 hparams_search=optuna sparsity.weight=0.01",
    "-m experiment=topk5,topk16 dataset=fashion_mnist",
    "dataset=fashion_mnist trainer.epochs=3 -m",
    "hydra.mode=MULTIRUN model.latent_dim=8,16",
    "hydra.run.dir=/tmp/x trainer.resume=true",
    "experiment=conv_fc model.decoder_hidden=[]",
    "experiment=conv_fc model=fc model.tied=true",
    "model=conv model.decoder_hidden=[] model.decoder=fc",
    "dataset=image_folder dataset.root=/tmp/images dataset.skip_bad_files=true",
    "dataset=fashion_mnist dataset.root=/tmp/data",  # dataset.root is ${paths.data_dir} in the YAML
    "paths.data_dir=/big/disk/data paths.output_dir=/big/disk/runs dataset=kmnist",
    "+model.foo=1",  # validate names it, in the same words
    "++trainer.max_parameters=1000000000",
    "~model.tied",
    "model=null",
    "seed=3",
    "seed=-1",  # validate's range check, not the command line's
    "'trainer.stages=[{epochs: 2, tied: true}, {epochs: 3, tied: false}]'",
    "+model._target_=my.Model model.foo=1",  # a _target_ node: its constructor is the schema
    "-m seed=range(0,3)",
    "-m 'model.latent_dim=glob(*)'",
    "--cfg job experiment=mlp32",
    "--info",
]

REFUSED = [
    ("experiment=nosuch", "experiment", "allowed: one of conv32"),
    ("hparams_search=nosuch", "hparams_search", "allowed: one of optuna"),
    ("model=nosuch", "model", "allowed: one of conv, conv_fc, deep_fc, fc, mlp, sae"),
    ("-m model=fc,nosuch", "model", "got 'nosuch'"),
    ("model.foo=1", "model.foo", "unknown key; valid keys here: name, latent_dim, encoder"),
    ("model=conv model.tied=true", "model.tied", "unknown key"),
    ("experiment=conv_fc model.tied=true", "model.tied", "decoder_hidden"),
    ("experiment=search_l1 sparsity.k=3", "sparsity.k", "valid keys here: name, weight"),
    ("hparams_search=optuna sparsity.weight=3", "sparsity.weight", "valid keys here: name"),  # the sweeper only
    ("paths.data=/x", "paths.data", "unknown key; valid keys here: root_dir, data_dir, output_dir, cache_dir"),
    ("trainer.epoch=3", "trainer.epoch", "valid keys here: epochs"),
    ("+model.latent_dim=3", "model.latent_dim", "already set"),
    ("~model.nosuch", "model.nosuch", "unknown key"),
    ("foo=bar", "foo", "unknown key; valid keys here: optimized_metric, seed, tags"),
    ("seed.x=1", "seed.x", "single value"),
    ("model.latent_dim=1,2", "model.latent_dim", "sweep only with -m"),
    ("'model.encoder=[{out'", "model.encoder", "cannot parse"),
    ("--nosuch", "--nosuch", "unknown option"),
    ("a=1 -m b=2", "b", "after an option such as -m"),
    ("--config-dir /no/such/dir", "--config-dir", "no such folder"),
    ("--config-path /no/such/dir", "--config-path", "no such folder"),
    ("-cn nosuch", "--config-name", "allowed: one of config, eval"),
]


@pytest.mark.parametrize("line", ACCEPTED)
def test_valid_command_lines_pass(line):
    check_command_line(shlex.split(line), CONF_DIR)


# The inner loop (pytest -m "not slow") checks an experiment with stages, one that searches with
# a sweeper and one that mixes conv and fc settings; test_experiments.py composes and trains others.
INNER_LOOP_EXPERIMENTS = {"deep_fc_layerwise", "search_l1", "conv_fc"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in INNER_LOOP_EXPERIMENTS else pytest.mark.slow)
                                  for name in EXPERIMENTS])
def test_every_experiment_passes(name):
    check_command_line([f"experiment={name}", "dataset=synthetic"], CONF_DIR)


def test_the_inner_loop_experiments_exist():
    assert INNER_LOOP_EXPERIMENTS <= set(EXPERIMENTS)


@pytest.mark.parametrize(("line", "key", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_command_lines_are_refused_in_one_line(line, key, words):
    with pytest.raises(ConfigError) as info:
        check_command_line(shlex.split(line), CONF_DIR)
    assert info.value.key == key
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_the_unknown_key_line_is_the_one_validate_gives_for_plus():
    with pytest.raises(ConfigError) as plain:
        check_command_line(["model.foo=1"], CONF_DIR)
    with pytest.raises(ConfigError) as plus:
        validate(compose("+model.foo=1", "dataset=synthetic"))
    assert str(plain.value) == str(plus.value)


def test_evaluate_command_lines(tmp_path):
    check_command_line(["run_dir=x", "eval.knn_k=3", "device=cpu", "dataset_root=/data"], CONF_DIR, "eval")
    for line, key in (("run_dir=x eval.knn=3", "eval.knn"), ("model=fc", "model"), ("foo=1", "foo"),
                      ("device=nosuch", "device")):
        with pytest.raises(ConfigError) as info:
            check_command_line(shlex.split(line), CONF_DIR, "eval")
        assert info.value.key == key


def test_a_config_dir_adds_options_and_its_keys_are_checked(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("name: fc\nlatent_dim: 512\n")
    (tmp_path / "model" / "mine.yaml").write_text("_target_: my.Model\nsize: 3\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_wide.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: wide\n\nmodel:\n  tied: true\n")
    base = ["--config-dir", str(tmp_path)]
    check_command_line([*base, "model=wide", "model.latent_dim=8"], CONF_DIR)
    check_command_line([*base, "model=mine", "model.anything=1"], CONF_DIR)  # _target_: not ours to check
    check_command_line([*base, "experiment=my_wide", "model.tied=false"], CONF_DIR)  # the experiment sets it
    check_command_line([*base, "experiment=mlp32"], CONF_DIR)
    with pytest.raises(ConfigError, match=r"model.tied: a valid key that \S*model/wide.yaml does not set"):
        check_command_line([*base, "model=wide", "model.tied=true"], CONF_DIR)
    with pytest.raises(ConfigError, match="allowed: one of conv, conv_fc, deep_fc, fc, mine, mlp, sae, wide"):
        check_command_line([*base, "model=nosuch"], CONF_DIR)
    with pytest.raises(ConfigError, match="model.foo: unknown key"):
        check_command_line([*base, "experiment=my_wide", "model.foo=1"], CONF_DIR)
