"""Registries: name -> builder, clear errors, duplicates refused, ``_target_`` escape hatch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import aeexp
from aeexp.models import Autoencoder
from aeexp.models.fc import build_fc
from aeexp.registry import ALL_REGISTRIES, MODELS, OPTIMIZERS, Registry, RegistryError
from conftest import REPO, TinyUserModel


@pytest.fixture
def widgets() -> Registry:
    registry = Registry("widget")

    @registry.register("square")
    def square(side: int = 1, scale: int = 1):
        return ("square", side * scale)

    @registry.register("circle")
    def circle(radius: int = 1):
        return ("circle", radius)

    return registry


def test_unknown_name_error_lists_registered_names(widgets):
    with pytest.raises(RegistryError) as info:
        widgets.get("triangle")
    message = str(info.value)
    assert "triangle" in message
    assert "circle" in message and "square" in message


def test_unknown_model_name_error_lists_fc():
    with pytest.raises(RegistryError, match="fc"):
        MODELS.build({"name": "nosuch"}, input_shape=(1, 28, 28), bottleneck=nn.Identity())


def test_node_without_name_or_target_is_refused(widgets):
    with pytest.raises(RegistryError, match="_target_"):
        widgets.build({"side": 2})


def test_duplicate_registration_is_refused_and_keeps_the_first(widgets):
    first = widgets.get("square")
    with pytest.raises(RegistryError, match="square"):
        widgets.register("square")(lambda: None)
    assert widgets.get("square") is first


def test_builtin_names_cannot_be_registered_twice():
    with pytest.raises(RegistryError, match="already registered"):
        MODELS.register("fc")(lambda **kwargs: None)
    assert MODELS.get("fc") is build_fc


def test_build_by_name_passes_params_and_context(widgets):
    assert widgets.build({"name": "square", "side": 3}, scale=2) == ("square", 6)
    assert widgets.build(OmegaConf.create({"name": "circle", "radius": 5})) == ("circle", 5)


def test_build_registered_model_by_name():
    model = MODELS.build({"name": "fc", "latent_dim": 8}, input_shape=(1, 6, 6), bottleneck=nn.Identity())
    assert isinstance(model, Autoencoder)
    x_hat, z = model(torch.rand(2, 1, 6, 6))
    assert z.shape == (2, 8) and x_hat.shape == (2, 1, 6, 6)


def test_build_users_own_model_class_via_target():
    bottleneck = nn.Identity()
    node = OmegaConf.create({"_target_": f"{TinyUserModel.__module__}.TinyUserModel", "latent_dim": 5})
    model = MODELS.build(node, input_shape=(1, 4, 4), bottleneck=bottleneck)
    assert isinstance(model, TinyUserModel)
    assert model.latent_dim == 5 and model.input_shape == (1, 4, 4)
    assert model.bottleneck is bottleneck
    assert model(torch.rand(3, 1, 4, 4))[0].shape == (3, 1, 4, 4)


def test_build_torch_optimizer_via_target_optimizes_the_model_parameters():
    model = nn.Linear(4, 2)
    params = list(model.parameters())
    optimizer = OPTIMIZERS.build({"_target_": "torch.optim.SGD", "lr": 0.5}, params=params)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.5
    # the very same tensors, not copies: a step must move the model's weights
    assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], params))


def test_every_registry_is_filled_on_import():
    kinds = {registry.kind: registry.names() for registry in aeexp.ALL_REGISTRIES}
    assert "fc" in kinds["model"]
    assert "none" in kinds["sparsity"] and "none" in kinds["noise"]
    assert {"mnist", "fashion_mnist", "kmnist", "synthetic"} <= set(kinds["dataset"])
    assert {"adam", "adamw", "sgd"} <= set(kinds["optimizer"])
    assert {"plateau", "cosine", "none"} <= set(kinds["scheduler"])


@pytest.mark.slow
def test_python_m_aeexp_list_prints_every_kind_and_name():
    result = subprocess.run(
        [sys.executable, "-m", "aeexp", "list"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for registry in ALL_REGISTRIES:
        kind_lines = [line for line in lines if line.split()[:1] == [registry.kind]]
        assert kind_lines, f"no line for {registry.kind!r} in:\n{result.stdout}"
        assert any(all(name in line for name in registry.names()) for line in kind_lines), registry.kind
    # the YAML options of each config group are listed too (mlp is a config, not a builder)
    assert any(line.split()[:1] == ["model"] and "mlp" in line for line in lines)


def test_list_with_a_config_dir_shows_the_users_options_beside_the_built_in_ones(tmp_path, capsys):
    from aeexp.__main__ import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("name: fc\nlatent_dim: 512\n")
    (tmp_path / "model" / "fc.yaml").write_text("name: fc\nlatent_dim: 7\n")  # Hydra finds the built-in fc first
    (tmp_path / "mygroup").mkdir()
    (tmp_path / "mygroup" / "x.yaml").write_text("a: 1\n")
    main(["list", "--config-dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    model = lines.index(next(line for line in lines if line.split()[:1] == ["model"] and "mlp" in line))
    assert "wide" not in lines[model]  # the built-in line holds the built-in options only
    assert lines[model + 1].split() == ["yours:", "fc", "(unused:", "the", "built-in", "fc", "comes", "first;",
                                        "rename", "yours),", "wide"]
    assert any(line.split() == ["mygroup", "yours:", "x"] for line in lines)
    assert any(str(tmp_path) in line and "--config-dir" in line for line in lines)

    main(["list"])  # without --config-dir: the built-in options only
    assert "yours" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--config-dir", str(tmp_path / "nosuch")])
    assert exit_info.value.code == 2 and "no such folder" in capsys.readouterr().err
