"""Models built from the config tree: shapes, layer sizes, encode/decode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aeexp.config import validate
from aeexp.models import Autoencoder
from aeexp.models.factory import build_model
from conftest import compose


def linear_sizes(module: nn.Module) -> list[int]:
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


def model_for(*overrides: str, input_shape=(1, 28, 28)) -> Autoencoder:
    cfg = validate(compose("dataset=synthetic", *overrides))
    return build_model(cfg, input_shape)


@pytest.mark.parametrize(("option", "latent_dim"), [("fc", 64), ("mlp", 32)])
def test_forward_returns_reconstruction_of_input_shape_and_code(option, latent_dim):
    model = model_for(f"model={option}")
    assert isinstance(model, Autoencoder)
    x = torch.rand(5, 1, 28, 28)
    x_hat, z = model(x)
    assert x_hat.shape == x.shape
    assert z.shape == (5, latent_dim)


def test_fc_is_the_shallow_784_64_784_net():
    model = model_for("model=fc")
    assert linear_sizes(model.encoder) == [64]
    assert linear_sizes(model.decoder) == [784]
    assert any(isinstance(m, nn.LeakyReLU) for m in model.modules())


def test_mlp_is_784_512_256_32_mirrored_with_sigmoid_output():
    model = model_for("model=mlp")
    assert linear_sizes(model.encoder) == [512, 256, 32]
    assert linear_sizes(model.decoder) == [256, 512, 784]
    activations = [m for m in model.decoder.modules() if isinstance(m, (nn.ReLU, nn.Sigmoid))]
    assert [type(m) for m in activations] == [nn.ReLU, nn.ReLU, nn.Sigmoid]
    x_hat, _ = model(torch.rand(4, 1, 28, 28))
    assert x_hat.min() >= 0 and x_hat.max() <= 1


def test_model_sizes_itself_by_the_input_shape():
    model = model_for("model=mlp", "model.latent_dim=6", input_shape=(3, 8, 10))
    x = torch.rand(2, 3, 8, 10)
    x_hat, z = model(x)
    assert x_hat.shape == x.shape and z.shape == (2, 6)
    assert linear_sizes(model.decoder)[-1] == 3 * 8 * 10


def test_layer_descriptors_repeat_and_add_dropout():
    model = model_for("model.encoder=[{out_features:16,repeat:3,dropout:0.25}]", "model.latent_dim=4")
    assert linear_sizes(model.encoder) == [16, 16, 16, 4]
    dropouts = [m for m in model.encoder.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and dropouts[0].p == 0.25


def test_forward_is_decode_of_encode():
    model = model_for("model=mlp").eval()
    x = torch.rand(3, 1, 28, 28)
    x_hat, z = model(x)
    assert torch.equal(z, model.encode(x))
    assert torch.equal(x_hat, model.decode(z))
