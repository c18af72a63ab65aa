"""The config tree composes, and bad values fail early with one ConfigError naming key and value."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from aeexp.config import ConfigError, validate
from conftest import CONF_DIR, REPO, compose, inner_loop

GROUP_OPTIONS = sorted(
    (group.name, path.stem)
    for group in CONF_DIR.iterdir()
    if group.is_dir() and group.name not in ("experiment", "hydra", "hparams_search", "debug")  # _global_ files: below
    for path in group.glob("*.yaml")
)
# Options with a value the user must give (`???` in their YAML).
REQUIRED = {"image_folder": "dataset.root=/tmp/any-image-folder", "vectors": "dataset.path=/tmp/any-vectors.npy"}
EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def test_the_config_tree_has_every_group_of_the_design():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"model", "sparsity", "noise", "dataset", "device", "optimizer", "scheduler", "trainer", "paths"} <= groups
    assert EXPERIMENTS, "conf/experiment/ holds no experiments"


@pytest.mark.slow  # every YAML file; the inner loop composes the defaults and the options other tests use
@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group != "dataset":
        overrides.append("dataset=synthetic")
    if option in REQUIRED:
        overrides.append(REQUIRED[option])
    cfg = validate(compose(*overrides))
    assert group in cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")))
def test_every_hparams_search_composes_and_validates(name):
    validate(compose(f"hparams_search={name}", "dataset=synthetic"))


@pytest.mark.slow  # the inner loop composes a few (test_experiments); the full set here
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    validate(compose(f"experiment={name}", "dataset=synthetic"))


def test_defaults_follow_the_command_line_contract():
    cfg = validate(compose())
    assert cfg.model.name == "fc" and cfg.model.latent_dim == 64
    assert cfg.sparsity.name == "none" and cfg.noise.name == "none"
    assert cfg.dataset.name == "mnist"
    assert cfg.device.name == "auto" and cfg.device.precision == "fp32"
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.scheduler.name == "plateau"
    assert (cfg.scheduler.factor, cfg.scheduler.patience, cfg.scheduler.stop_lr) == (0.1, 10, 1e-5)
    assert cfg.trainer.resume is False
    assert cfg.seed == 0


@pytest.mark.parametrize(
    ("experiment", "latent_dim", "batch_size"),
    inner_loop([("mlp32", 32, 128), ("fc_shallow", 64, 512), ("mlp2", 2, 128)], 2),
)
def test_experiments_set_the_seeds_settings(experiment, latent_dim, batch_size):
    cfg = validate(compose(f"experiment={experiment}", "dataset=synthetic"))
    assert cfg.model.latent_dim == latent_dim
    assert cfg.trainer.batch_size == batch_size


def test_command_line_overrides_beat_the_experiment_file():
    cfg = validate(compose("experiment=mlp32", "model.latent_dim=8", "trainer.epochs=3", "dataset=synthetic"))
    assert cfg.model.latent_dim == 8 and cfg.trainer.epochs == 3
    assert [layer.out_features for layer in cfg.model.encoder] == [512, 256]


def test_validate_fills_defaults_from_the_schemas():
    cfg = compose("dataset=synthetic")
    with open_dict(cfg):
        del cfg.trainer["image_every"]  # a key a config file may leave out
    assert validate(cfg).trainer.image_every == 5


def test_dataset_root_follows_the_AEEXP_DATA_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("AEEXP_DATA", str(tmp_path))
    assert validate(compose("dataset=fashion_mnist")).dataset.root == str(tmp_path)


PATH_VARIABLES = ("AEEXP_ROOT", "AEEXP_DATA", "AEEXP_OUTPUT", "AEEXP_CACHE")


def test_paths_are_absolute_and_the_same_from_any_folder(monkeypatch, tmp_path):
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = validate(compose("dataset=fashion_mnist"))
    assert cfg.paths == {"root_dir": str(REPO), "data_dir": str(REPO / "data"), "output_dir": str(REPO / "outputs"),
                         "cache_dir": str(REPO / ".cache")}
    assert cfg.dataset.root == cfg.paths.data_dir


def test_paths_follow_AEEXP_ROOT_and_the_command_line(monkeypatch, tmp_path):
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AEEXP_ROOT", "project")  # relative: from the current folder, made absolute
    cfg = validate(compose("dataset=kmnist"))
    assert cfg.paths.root_dir == str(tmp_path / "project")
    assert cfg.dataset.root == cfg.paths.data_dir == str(tmp_path / "project" / "data")
    assert cfg.paths.output_dir == str(tmp_path / "project" / "outputs")
    cfg = validate(compose("dataset=kmnist", "paths.data_dir=/big/disk"))
    assert cfg.dataset.root == "/big/disk" and cfg.paths.output_dir == str(tmp_path / "project" / "outputs")
    cfg = validate(compose("dataset=kmnist", "paths.data_dir=/big/disk", "dataset.root=/elsewhere"))
    assert cfg.dataset.root == "/elsewhere"  # dataset.root still wins
    with pytest.raises(ConfigError, match="paths.nosuch: unknown key; valid keys here: root_dir, data_dir"):
        validate(compose("dataset=kmnist", "+paths.nosuch=1"))


# ------------------------------------------------------------------------ bad values
BAD_VALUES = [
    # (overrides, the key the message must name, text the message must contain); the first six
    # stand for the others in the inner loop: an integer's range, a list item's range, a wrong
    # type, an unknown key, an unknown registered name, a value inside a layer descriptor
    (["trainer.epochs=0"], "trainer.epochs", ["0"]),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas", ["1.5"]),
    (["trainer.epochs=abc"], "trainer.epochs", ["abc"]),
    (["+model.foo=1"], "model.foo", ["unknown", "latent_dim"]),
    (["model.name=nosuch"], "model.name", ["nosuch", "fc"]),
    (["model.encoder=[{out_features:0}]"], "model.encoder[0].out_features", ["0"]),
    (["trainer.batch_size=0"], "trainer.batch_size", ["0"]),
    (["trainer.val_batch_size=-3"], "trainer.val_batch_size", ["-3"]),
    (["trainer.grad_clip=0"], "trainer.grad_clip", ["0"]),
    (["model.latent_dim=0"], "model.latent_dim", ["0"]),
    (["model.latent_dim=-4"], "model.latent_dim", ["-4"]),
    (["optimizer.lr=0"], "optimizer.lr", ["0"]),
    (["optimizer.lr=-1"], "optimizer.lr", ["-1"]),
    (["optimizer.eps=0"], "optimizer.eps", ["0"]),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay", ["-1"]),
    (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum", ["1.0"]),
    (["trainer.epochs=1.5"], "trainer.epochs", ["1.5"]),
    (["optimizer.lr=abc"], "optimizer.lr", ["abc"]),
    (["trainer.resume=maybe"], "trainer.resume", ["maybe"]),
    (["seed=abc"], "seed", ["abc"]),
    (["+trainer.bogus=3"], "trainer.bogus", ["unknown", "epochs"]),
    (["+sparsity.k=3"], "sparsity.k", ["unknown"]),
    (["+foo=1"], "foo", ["unknown", "trainer"]),
    (["noise.name=nosuch"], "noise.name", ["nosuch", "none"]),
    (["optimizer.name=nosuch"], "optimizer.name", ["nosuch", "adam", "sgd"]),
    (["scheduler.name=nosuch"], "scheduler.name", ["nosuch", "plateau", "cosine"]),
    (["scheduler.factor=1.5"], "scheduler.factor", ["1.5"]),
    (["scheduler.patience=-1"], "scheduler.patience", ["-1"]),
    (["scheduler.stop_lr=-1"], "scheduler.stop_lr", ["-1"]),
    (["scheduler=cosine", "scheduler.min_lr=-1"], "scheduler.min_lr", ["-1"]),
    (["device.precision=fp8"], "device.precision", ["fp8", "fp32", "bf16", "fp16"]),
    (["device.name=tpu"], "device.name", ["tpu", "cpu", "cuda"]),
    (["model.code_activation=relux"], "model.code_activation", ["relux", "leaky_relu"]),
    (["model.encoder=[{out_features:8,dropout:1.5}]"], "model.encoder[0].dropout", ["1.5"]),
    (["dataset=fashion_mnist", "dataset.val_size=0"], "dataset.val_size", ["0"]),
    (["dataset=synthetic", "dataset.num_test=0"], "dataset.num_test", ["0"]),
    (["dataset=synthetic", "dataset.num_train=0"], "dataset.num_train", ["0"]),
]


@pytest.mark.parametrize(
    ("overrides", "key", "texts"), inner_loop(BAD_VALUES, 6), ids=[" ".join(case[0]) for case in BAD_VALUES]
)
def test_bad_value_raises_config_error_naming_key_and_value(overrides, key, texts):
    if not any(o.startswith("dataset=") for o in overrides):
        overrides = ["dataset=synthetic", *overrides]
    with pytest.raises(ConfigError) as info:
        validate(compose(*overrides))
    message = str(info.value)
    assert info.value.key == key, message
    assert message.startswith(f"{key}:"), message
    for text in texts:
        assert text in message, f"{text!r} not in {message!r}"


def test_unknown_key_inside_a_layer_descriptor_is_named_with_its_path():
    """A typo inside ``model.encoder[0]`` must point there and list the layer's keys."""
    with pytest.raises(ConfigError) as info:
        validate(compose("dataset=synthetic", "model.encoder=[{out_features:8,bogus:1}]"))
    message = str(info.value)
    assert info.value.key == "model.encoder[0].bogus", message
    assert "out_features" in message and "dropout" in message, message


def test_a_required_value_left_out_names_its_key():
    with pytest.raises(ConfigError) as err:
        validate(compose("dataset=image_folder"))
    assert err.value.key == "dataset.root"


# ------------------------------------------------------------- the tests' own compose
# The first case of each list stands for it in the inner loop.
SAME_AS_HYDRA = [
    ["experiment=deep_fc_layerwise", "dataset=synthetic", "+foo=1", "~trainer.image_every", "++seed=4",
     "model.encoder=[{out_features:8,bogus:1}]", "trainer.stages=[{},{optimizer:{lr:1.0e-4}}]"],
    ["dataset=synthetic", "model=mlp", "model.latent_dim=3", "trainer.epochs=2"],
    ["dataset=synthetic", "sparsity=topk", "sparsity.k=2", "trainer.stages=[{epochs:1}]", "tags=[a,b]"],
    ["dataset=fashion_mnist", "dataset.root=${paths.data_dir}/x", "optimizer=sgd", "debug=fast"],
]
NOT_COMPOSED = [
    ["dataset=synthetic", "model=nosuch", "trainer.nosuch=1"],  # the group's error, not the key's
    ["trainer.nosuch=1"],  # no such key: Hydra asks for +
    ["+trainer.epochs=3"],  # already there: Hydra asks for ++ or no +
    ["~trainer.nosuch"],
    ["model=nosuch"],
    ["dataset=synthetic", "model={_target_: my.Model, latent_dim: 4}"],  # a group given a dict
    ["trainer.epochs=[1"],  # not an override Hydra can parse
    ["trainer.epochs=1,2"],  # a sweep: not in compose
]


@pytest.mark.parametrize("overrides", inner_loop([(o,) for o in SAME_AS_HYDRA], 1), ids=lambda o: " ".join(o))
def test_the_tests_compose_gives_what_hydra_composes(overrides):
    """conftest.compose reuses the group choices' composition; the result must be Hydra's own."""
    from conftest import hydra_compose

    ours, hydras = compose(*overrides), hydra_compose(*overrides)
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras)
    assert OmegaConf.is_struct(ours) and OmegaConf.is_struct(hydras)
    assert compose(*overrides) is not ours  # a fresh copy every time: a test may change its own


@pytest.mark.parametrize("overrides", inner_loop([(o,) for o in NOT_COMPOSED], 1), ids=lambda o: " ".join(o))
def test_the_tests_compose_fails_as_hydra_fails(overrides):
    from conftest import hydra_compose

    errors = []
    for composer in (compose, hydra_compose):
        with pytest.raises(Exception) as info:
            composer(*overrides)
        error = info.value
        errors.append((type(error), str(error), type(error.__cause__), str(error.__cause__)))
    assert errors[0] == errors[1]
