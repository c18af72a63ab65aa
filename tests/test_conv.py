"""Convolutional autoencoders: any image size, the two seeds' nets, sparse conv codes, bad stacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aeexp.config import ConfigError, validate
from aeexp.models import Autoencoder
from aeexp.models.factory import build_model
from aeexp.training.run import run_training
from conftest import compose, inner_loop, small_run


def model_for(*overrides: str, input_shape=(1, 28, 28)) -> Autoencoder:
    return build_model(validate(compose("dataset=synthetic", *overrides)), input_shape)


def layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("model", ["conv", "conv_fc"])
@pytest.mark.parametrize("shape", inner_loop([((1, 28, 28),), ((3, 32, 32),), ((1, 64, 48),), ((1, 29, 31),)], 2), ids=str)
def test_output_shape_equals_input_shape_for_any_image_size(model, shape):
    net = model_for(f"model={model}", input_shape=shape)
    assert isinstance(net, Autoencoder)
    x = torch.rand(2, *shape)
    x_hat, z = net(x)
    assert x_hat.shape == x.shape
    assert z.dim() == 2 and len(z) == 2  # codes are (batch, features) for sparsity and figures


def test_conv_is_the_second_seeds_net():
    net = model_for("model=conv")
    convs, deconvs = layers(net.encoder, nn.Conv2d), layers(net.decoder, nn.ConvTranspose2d)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 16, (3, 3), (2, 2), (1, 1)), (16, 32, (3, 3), (2, 2), (1, 1))]
    assert [(m.in_features, m.out_features) for m in layers(net.encoder, nn.Linear)] == [(32 * 7 * 7, 32)]
    assert [(m.in_features, m.out_features) for m in layers(net.decoder, nn.Linear)] == [(32, 32 * 7 * 7)]
    assert [(d.in_channels, d.out_channels, d.kernel_size, d.stride, d.padding, d.output_padding)
            for d in deconvs] == [(32, 16, (3, 3), (2, 2), (1, 1), (1, 1)), (16, 1, (3, 3), (2, 2), (1, 1), (1, 1))]
    assert [type(m) for m in net.decoder if isinstance(m, (nn.ReLU, nn.Sigmoid))] == [nn.ReLU, nn.Sigmoid]
    assert model_for("model=conv", "model.latent_dim=8")(torch.rand(3, 1, 28, 28))[1].shape == (3, 8)


def test_conv_takes_its_input_channels_from_the_data():
    net = model_for("model=conv", input_shape=(3, 32, 32))
    assert layers(net.encoder, nn.Conv2d)[0].in_channels == 3
    assert layers(net.decoder, nn.ConvTranspose2d)[-1].out_channels == 3


def test_conv_fc_is_the_first_seeds_net_with_a_128_d_code():
    net = model_for("model=conv_fc")
    kinds = [type(m) for m in net.encoder]
    assert kinds == [nn.Conv2d, nn.LeakyReLU] * 4 + [nn.MaxPool2d, nn.Flatten]
    for conv in layers(net.encoder, nn.Conv2d):
        assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (8, (6, 6), (1, 1), (0, 0))
    assert net.encoder[8].kernel_size == 2 and net.encoder[8].stride == 2
    assert [(m.in_features, m.out_features) for m in layers(net.decoder, nn.Linear)] == [(128, 784)]
    assert layers(net.decoder, nn.LeakyReLU)
    x_hat, z = net(torch.rand(4, 1, 28, 28))
    assert z.shape == (4, 128) and x_hat.shape == (4, 1, 28, 28)


def test_one_hot_codes_decode_to_images_for_the_dictionary():
    for model, features in (("conv", 32), ("conv_fc", 128)):
        net = model_for(f"model={model}").eval()
        atoms = net.decode(torch.eye(features))
        assert atoms.shape == (features, 1, 28, 28)


# ------------------------------------------------------------------ training on conv codes
# A conv epoch costs several fc ones: these runs train on a quarter of small_run's images
# (two batches of each split), which is all their assertions need.
FEW_IMAGES = ("dataset.num_train=128", "dataset.num_val=64")


@pytest.mark.parametrize("model", ["conv", pytest.param("conv_fc", marks=pytest.mark.slow)])
def test_topk_works_on_a_conv_code(tmp_path, model):
    metrics = run_training(small_run(f"model={model}", "sparsity=topk", "sparsity.k=8", "trainer.epochs=1",
                                     *FEW_IMAGES), tmp_path)
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_mse"])
    assert 0 < metrics["val_l0"] <= 8


def test_a_conv_net_written_on_the_command_line_builds_and_trains(tmp_path):
    encoder = ("model.encoder=[{channels:8,kernel:5,padding:2,activation:gelu,pool:2},"
               "{channels:16,kernel:3,stride:2,activation:leaky_relu,repeat:2}]")
    cfg = small_run("model=conv", encoder, "model.latent_dim=10", "trainer.epochs=1", *FEW_IMAGES)
    net = build_model(validate(cfg), (1, 28, 28))
    convs = layers(net.encoder, nn.Conv2d)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16), (16, 16)]
    assert len(layers(net.encoder, nn.MaxPool2d)) == 1 and len(layers(net.decoder, nn.Upsample)) == 1
    assert len(layers(net.decoder, nn.ConvTranspose2d)) == 3
    metrics = run_training(cfg, tmp_path)
    assert math.isfinite(metrics["val_mse"]) and metrics["status"] == "completed"


def test_a_conv_encoder_with_an_fc_decoder_and_a_linear_code():
    net = model_for("model=conv_fc", "model.latent_dim=20",
                    "model.decoder_hidden=[{out_features:64,activation:relu}]", input_shape=(3, 32, 36))
    assert [(m.in_features, m.out_features) for m in layers(net, nn.Linear)] == [
        (8 * 6 * 8, 20), (20, 64), (64, 3 * 32 * 36)]  # 32x36 -> 12x16 after four 6x6 convs -> pool 2
    x_hat, z = net(torch.rand(2, 3, 32, 36))
    assert z.shape == (2, 20) and x_hat.shape == (2, 3, 32, 36)


# ---------------------------------------------------------------------------- bad stacks
def test_a_stack_that_shrinks_the_image_below_one_pixel_names_the_layer_and_size():
    encoder = ("model.encoder=[{channels:8,kernel:3,stride:2,padding:1},{channels:8,kernel:3,stride:2,padding:1},"
               "{channels:8,kernel:8}]")
    with pytest.raises(ConfigError) as info:
        model_for("model=conv", encoder)
    message = str(info.value)
    assert info.value.key == "model.encoder[2]", message
    assert "7x7 feature map to 0x0" in message and "kernel 8" in message and "1x28x28" in message, message


def test_pooling_below_one_pixel_names_the_layer():
    with pytest.raises(ConfigError) as info:
        model_for("model=conv_fc", "model.encoder=[{channels:8,kernel:6,repeat:4,pool:16}]")
    assert info.value.key == "model.encoder[0]" and "MaxPool2d 16" in str(info.value) and "0x0" in str(info.value)


def test_a_repeated_block_that_shrinks_too_far_says_which_repeat():
    with pytest.raises(ConfigError) as info:
        model_for("model=conv_fc", "model.encoder=[{channels:8,kernel:6,repeat:6}]")
    assert info.value.key == "model.encoder[0]" and "repeat 6 of 6" in str(info.value)


BAD = [
    ("model.encoder=[{channels:8,kernel:0}]", "model.encoder[0].kernel", "0"),
    ("model.encoder=[{channels:8},{channels:8,padding:-1}]", "model.encoder[1].padding", "-1"),
    ("model.encoder=[{channels:0}]", "model.encoder[0].channels", "0"),
    ("model.encoder=[{channels:8,stride:0}]", "model.encoder[0].stride", "0"),
    ("model.encoder=[{channels:8,pool:0}]", "model.encoder[0].pool", "0"),
    ("model.encoder=[{channels:8,repeat:0}]", "model.encoder[0].repeat", "0"),
    ("model.encoder=[{channels:8,activation:relux}]", "model.encoder[0].activation", "relux"),
    ("model.encoder=[{channels:8,bogus:1}]", "model.encoder[0].bogus", "unknown"),
    ("model.encoder=[]", "model.encoder", "at least one"),
    ("model.latent_dim=0", "model.latent_dim", "0"),
    ("model.decoder=mirror", "model.decoder", "transpose"),
    ("model.decoder_hidden=[{out_features:8}]", "model.decoder_hidden", "decoder=fc"),
]


@pytest.mark.parametrize(("override", "key", "text"), inner_loop(BAD, 4), ids=[case[0] for case in BAD])
def test_bad_conv_values_fail_validation_naming_key_and_value(override, key, text):
    with pytest.raises(ConfigError) as info:
        validate(compose("dataset=synthetic", "model=conv", override))
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"{key}:") and text in str(info.value)


def test_bad_stack_fails_before_any_training(tmp_path):
    with pytest.raises(ConfigError):
        run_training(small_run("model=conv", "model.encoder=[{channels:8,kernel:29}]"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# --------------------------------------------------------------------------- experiments
@pytest.mark.parametrize(("experiment", "latent_dim", "batch_size", "epochs", "scheduler"),
                         [("conv_fc", None, 512, 200, "plateau"), ("conv32", 32, 128, 30, "none")])
def test_conv_experiments_set_the_seeds_settings(experiment, latent_dim, batch_size, epochs, scheduler):
    cfg = validate(compose(f"experiment={experiment}", "dataset=synthetic"))
    assert cfg.model.name == "conv" and cfg.model.latent_dim == latent_dim
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.scheduler.name) == (batch_size, epochs, scheduler)
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == pytest.approx(1e-3)
