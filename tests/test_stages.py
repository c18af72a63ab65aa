"""Tied weights, training stages and greedy layer-wise training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aeexp.config import ConfigError, validate
from aeexp.models.layerwise import carry_over, keep_depth
from aeexp.models.tied import TiedLinear, tie, untie
from aeexp.training.run import run_training
from aeexp.models.factory import build_model
from aeexp.training.stages import plan_stages, stage_model
from aeexp.training.trainer import Trainer
from conftest import inner_loop, small_run

SHAPE = (1, 28, 28)
LAYERWISE = ("experiment=deep_fc_layerwise", "trainer.batch_size=64")
TIED_THEN_UNTIED = ("experiment=fc_tied_then_untied", "trainer.batch_size=64")


def model_from(*overrides: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(validate(small_run(*overrides)), SHAPE)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


# ----------------------------------------------------------------------- tied weights
def test_a_tied_decoder_layer_is_the_transpose_of_its_mirror_with_its_own_bias():
    model = model_from("model.tied=true")
    encoder, decoder = model.encoder[1][0], model.decoder[0][0]
    assert isinstance(decoder, TiedLinear) and decoder.source is encoder
    x = torch.randn(5, 64)
    torch.testing.assert_close(decoder(x), F.linear(x, encoder.weight.t(), decoder.bias))
    assert decoder.bias.shape == (784,) and decoder.bias is not encoder.bias


def test_the_shared_weight_is_one_parameter_in_the_state_dict_and_the_optimizer(tmp_path):
    model = model_from("model=mlp", "model.tied=true")  # 784-512-256-32, three tied pairs
    weights = [k for k in model.state_dict() if k.endswith("weight")]
    assert weights == ["encoder.1.0.weight", "encoder.2.0.weight", "encoder.3.0.weight"]
    assert len(list(model.parameters())) == 3 + 3 + 3  # encoder weights and biases, decoder biases

    metrics = run_training(small_run("model.tied=true", "trainer.epochs=1"), tmp_path)
    assert metrics["status"] == "completed"
    state = last_checkpoint(tmp_path)
    assert sorted(state["model"]) == ["decoder.0.0.bias", "encoder.1.0.bias", "encoder.1.0.weight"]
    assert len(state["optimizer"]["param_groups"][0]["params"]) == 3


def test_gradients_of_both_uses_add_up_on_the_shared_weight():
    tied = model_from("model=mlp", "model.tied=true")
    untied = untie(copy.deepcopy(tied))  # the same function with a separate decoder weight
    x = torch.rand(16, *SHAPE)
    for model in (tied, untied):
        F.mse_loss(model(x)[0], x).backward()
    for i, j in ((1, 2), (2, 1), (3, 0)):  # encoder block i mirrors decoder block j
        shared = tied.encoder[i][0].weight.grad
        expected = untied.encoder[i][0].weight.grad + untied.decoder[j][0].weight.grad.t()
        torch.testing.assert_close(shared, expected)


def test_untying_copies_the_shared_weight_and_keeps_the_output_exactly():
    model = model_from("model=mlp", "model.tied=true", "model.latent_dim=7")
    x = torch.rand(13, *SHAPE)
    before = model(x)[0]
    untie(model)
    assert not any(isinstance(m, TiedLinear) for m in model.modules())
    assert torch.equal(model(x)[0], before)
    assert model.decoder[2][0].weight is not model.encoder[1][0].weight
    assert torch.equal(model.decoder[2][0].weight, model.encoder[1][0].weight.t())


def test_the_untied_stage_starts_from_the_tied_stages_output_exactly():
    cfg = validate(small_run(*TIED_THEN_UNTIED))
    tied_stage, untied_stage = plan_stages(cfg)
    tied, _ = stage_model(cfg, SHAPE, tied_stage)
    with torch.no_grad():
        tied.encoder[1][0].weight.mul_(3)  # "trained"
    untied, trainable = stage_model(cfg, SHAPE, untied_stage, previous=tied)
    x = torch.rand(9, *SHAPE)
    assert torch.equal(untied(x)[0], tied(x)[0])
    assert len(trainable) == 4 and "decoder.0.0.weight" in untied.state_dict()


def test_a_decoder_that_does_not_mirror_cannot_be_tied():
    with pytest.raises(ConfigError) as info:
        validate(small_run("model=mlp", "model.tied=true", "model.decoder=[{out_features:128},{out_features:512}]"))
    assert info.value.key == "model.tied" and "[128, 512]" in str(info.value) and "[256, 512]" in str(info.value)

    model = model_from("model.encoder=[{out_features:256}]", "model.decoder=[{out_features:128}]", "model.latent_dim=32")
    with pytest.raises(ConfigError) as info:
        tie(model)
    message = str(info.value)
    assert "decoder.1.0 (128->784) does not mirror encoder.1.0 (784->256)" in message
    assert "decoder.0.0 (32->128) does not mirror encoder.2.0 (256->32)" in message


# ------------------------------------------------------------------------ layer-wise
def test_a_shallower_view_keeps_the_names_of_the_whole_model():
    model = model_from("model=deep_fc")
    names = lambda m: sorted(k for k in m.state_dict() if k.endswith("weight"))  # noqa: E731
    assert names(keep_depth(model, 1)) == ["decoder.3.0.weight", "encoder.1.0.weight"]
    assert names(keep_depth(model, 2)) == ["decoder.2.0.weight", "decoder.3.0.weight",
                                           "encoder.1.0.weight", "encoder.2.0.weight"]
    assert names(keep_depth(model, 4)) == names(model)
    assert keep_depth(model, 2)(torch.rand(3, *SHAPE))[1].shape == (3, 64)
    with pytest.raises(ConfigError, match="allowed: 1 to the model's 4 encoder Linear layers"):
        keep_depth(model, 5)


def test_carrying_over_a_layer_of_another_shape_names_both_shapes():
    model = model_from("model.latent_dim=64")
    with pytest.raises(ConfigError) as info:
        carry_over({"encoder.1.0.weight": torch.zeros(128, 784)}, model, "trainer.stages[1]")
    assert info.value.key == "trainer.stages[1]"
    assert "encoder.1.0.weight has shape (128, 784) in the previous stage and (64, 784) in this one" in str(info.value)


@pytest.fixture(scope="module")
def layerwise_run(tmp_path_factory):
    """The layer-wise experiment, one epoch a stage, with the model at the end of every stage."""
    run_dir = tmp_path_factory.mktemp("layerwise")
    ends = []  # (model, its state at the end of its stage)
    real = Trainer._next_stage

    def spy(self):
        ends.append((self.model, copy.deepcopy(self.model.state_dict())))
        real(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_next_stage", spy)
        metrics = run_training(small_run(*LAYERWISE, "trainer.epochs=1"), run_dir)
    final = last_checkpoint(run_dir)
    return run_dir, metrics, ends, final


def test_layerwise_stages_grow_the_net_and_train_only_the_new_layers(layerwise_run):
    run_dir, metrics, ends, final = layerwise_run
    assert metrics["status"] == "completed" and (metrics["stage"], metrics["stages"], metrics["epoch"]) == (4, 4, 4)
    models = [model for model, _ in ends]
    linears = [[(n, m.in_features, m.out_features) for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)] for model in models]
    assert linears[0] == [("encoder.1.0", 784, 128), ("decoder.3.0", 128, 784)]
    assert linears[1] == [("encoder.1.0", 784, 128), ("encoder.2.0", 128, 64),
                          ("decoder.2.0", 64, 128), ("decoder.3.0", 128, 784)]
    assert [n for n, _, _ in linears[2]] == ["encoder.1.0", "encoder.2.0", "encoder.3.0", "encoder.4.0",
                                             "decoder.0.0", "decoder.1.0", "decoder.2.0", "decoder.3.0"]
    trains = lambda model: sorted({n.rpartition(".")[0] for n, p in model.named_parameters() if p.requires_grad})  # noqa: E731
    assert trains(models[0]) == ["decoder.3.0", "encoder.1.0"]
    assert trains(models[1]) == ["decoder.2.0", "encoder.2.0"]
    assert trains(models[2]) == ["decoder.0.0", "decoder.1.0", "encoder.3.0", "encoder.4.0"]
    full = model_from(*LAYERWISE)
    assert {k: v.shape for k, v in final["model"].items()} == {k: v.shape for k, v in full.state_dict().items()}
    assert final["stage_index"] == 3 and final["stage_name"] == "finetune"


def test_frozen_layers_are_bit_identical_after_a_stage(layerwise_run):
    _, _, ends, final = layerwise_run
    (_, end1), (model2, end2), (model3, end3) = ends
    for later_model, later_end, earlier_end in ((model2, end2, end1), (model3, end3, end2)):
        frozen = [n for n, p in later_model.named_parameters() if not p.requires_grad]
        trained = [n for n, p in later_model.named_parameters() if p.requires_grad]
        assert frozen and trained
        for name in frozen:
            assert torch.equal(later_end[name], earlier_end[name]), name
    # ... while the fine-tuning stage, with nothing frozen, moves every layer
    for name, tensor in end3.items():
        assert not torch.equal(final["model"][name], tensor), name


def test_metrics_tensorboard_and_the_scatter_show_the_stages(layerwise_run):
    run_dir, _, _, _ = layerwise_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["stage"], metrics["stage_name"], metrics["stage_epoch"]) == (4, "finetune", 1)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("stage")] == [1, 2, 3, 4]
    assert "latent_scatter" in events.Tags()["images"]
    assert (run_dir / "images" / "latent_scatter.png").stat().st_size > 1000


# ---------------------------------------------------------------------- stage runs
def test_the_plateau_stop_ends_a_stage_not_the_run(tmp_path):
    metrics = run_training(small_run(*TIED_THEN_UNTIED, "trainer.epochs=5", "scheduler.stop_lr=1"), tmp_path)
    assert (metrics["epoch"], metrics["stage"], metrics["stage_name"]) == (2, 2, "untied")
    assert "stop_reason" in metrics


@pytest.mark.parametrize("recipe", [pytest.param("layerwise", marks=pytest.mark.slow), "tied_then_untied"])
def test_resume_inside_stage_2_continues_it_and_ends_like_an_uninterrupted_run(tmp_path, recipe):
    overrides = {"layerwise": LAYERWISE, "tied_then_untied": TIED_THEN_UNTIED}[recipe] + ("trainer.epochs=2",)
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_training(small_run(*overrides), whole)

    real_epoch = Trainer._run_epoch

    def crash_after_epoch_3(self, epoch):
        real_epoch(self, epoch)
        if epoch == 3:  # the first epoch of stage 2
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_run_epoch", crash_after_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            run_training(small_run(*overrides), split)
    assert (last_checkpoint(split)["stage_index"], last_checkpoint(split)["stage_epoch"]) == (1, 1)

    resumed_in = []

    def record(self, epoch):
        resumed_in.append((epoch, self.stage_index, self.stage_epoch))
        real_epoch(self, epoch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_run_epoch", record)
        run_training(small_run(*overrides, "trainer.resume=true"), split)
    assert resumed_in[0] == (4, 1, 1)  # epoch 4 is stage 2's second epoch

    a, b = last_checkpoint(whole), last_checkpoint(split)
    assert a["model"].keys() == b["model"].keys() and b["epoch"] == a["epoch"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# --------------------------------------------------------------- fail before work
@pytest.mark.parametrize(("override", "key"), inner_loop([
    ("trainer.stages=[{epochs:0}]", "trainer.stages[0].epochs"),
    ("trainer.stages=[{depth:0}]", "trainer.stages[0].depth"),
    ("trainer.stages=[{train:[]}]", "trainer.stages[0].train"),
    ("trainer.stages=[{},{optimizer:{lr:-1}}]", "trainer.stages[1].optimizer.lr"),
    ("trainer.stages=[{},{scheduler:{patience:-1}}]", "trainer.stages[1].scheduler.patience"),
    ("trainer.stages=[{bogus:1}]", "trainer.stages[0].bogus"),
    ("trainer.stages=[{depth:2}]", "trainer.stages[0].depth"),  # model=fc has one layer
], 3))
def test_bad_stages_fail_at_validation_naming_the_stage(override, key):
    with pytest.raises(ConfigError) as info:
        validate(small_run(override))
    assert info.value.key == key


def test_a_shallow_stage_with_sparsity_is_refused():
    with pytest.raises(ConfigError) as info:
        validate(small_run(*LAYERWISE, "sparsity=topk", "sparsity.k=1"))
    assert info.value.key == "trainer.stages[0].depth" and "sparsity=none" in str(info.value)


def test_a_train_path_that_names_no_layer_lists_the_layers(tmp_path):
    with pytest.raises(ConfigError) as info:
        run_training(small_run("trainer.stages=[{train:[encoder.7]}]", "trainer.epochs=1"), tmp_path)
    assert info.value.key == "trainer.stages[0].train"
    assert "encoder.1.0, decoder.0.0" in str(info.value) or "decoder.0.0, encoder.1.0" in str(info.value)


def test_a_stage_optimizer_override_reaches_the_optimizer():
    cfg = validate(small_run("trainer.stages=[{},{optimizer:{lr:1.0e-4}},{optimizer:{name:sgd,lr:0.1}}]"))
    stages = plan_stages(cfg)
    assert stages[0].optimizer["lr"] == 1e-3 and stages[1].optimizer["lr"] == 1e-4
    assert stages[1].optimizer["name"] == "adam"
    assert stages[2].optimizer == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}


def test_a_stage_naming_another_optimizer_gets_that_optimizers_defaults_not_the_groups():
    """``{name: sgd}`` alone passes validation, so it must build: SGD's schema fills the rest
    (its lr 1e-2, not Adam's 1e-3), as conf/optimizer/sgd.yaml would."""
    from aeexp.registry import OPTIMIZERS

    cfg = validate(small_run("trainer.stages=[{},{optimizer:{name:sgd},scheduler:{name:cosine}}]"))
    stage = plan_stages(cfg)[1]
    optimizer = OPTIMIZERS.build(stage.optimizer, params=[torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 1e-2 and optimizer.defaults["momentum"] == 0.9
    assert stage.scheduler["name"] == "cosine" and "min_lr" in stage.scheduler
