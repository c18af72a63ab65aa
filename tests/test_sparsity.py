"""Sparsity methods against independent reference computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import inner_loop, small_run

from aeexp.config import ConfigError, validate
from aeexp.sparsity.lifetime import LifetimeSparsity
from aeexp.sparsity.penalties import KLSparsity, L1Sparsity
from aeexp.sparsity.topk import BatchTopKSparsity, TopKSparsity
from aeexp.models.factory import build_model
from aeexp.training.run import run_training


def distinct_code(batch: int = 6, features: int = 10, seed: int = 0) -> torch.Tensor:
    """Random codes without ties, so 'the k largest' is unambiguous."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(batch * features, generator=g).float() / 7 - 3).view(batch, features)


def mask_of_k_largest_per_row(z: torch.Tensor, k: int) -> torch.Tensor:
    """Reference mask by sorting each row by hand (no topk)."""
    mask = torch.zeros_like(z, dtype=torch.bool)
    for i, row in enumerate(z.tolist()):
        for j in sorted(range(len(row)), key=lambda j: row[j], reverse=True)[:k]:
            mask[i, j] = True
    return mask


# ------------------------------------------------------------------------------- topk
def test_topk_forward_and_gradient_equal_a_dense_computation_masked_by_hand():
    z = distinct_code().requires_grad_()
    upstream = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    topk = TopKSparsity(k=3, aux_weight=0)
    out = topk(z)
    (out * upstream).sum().backward()

    mask = mask_of_k_largest_per_row(z.detach(), 3)
    assert torch.equal(out.detach(), torch.where(mask, z.detach(), torch.zeros_like(z)))
    assert torch.equal(z.grad, torch.where(mask, upstream, torch.zeros_like(upstream)))
    assert torch.all(z.grad[~mask] == 0)


def test_topk_is_active_in_eval_mode_and_works_on_conv_shaped_codes():
    z = distinct_code(4, 2 * 3 * 3).view(4, 2, 3, 3)
    topk = TopKSparsity(k=5, aux_weight=0).eval()
    out = topk(z)
    assert out.shape == z.shape
    assert torch.equal((out.view(4, -1) != 0).sum(1), torch.full((4,), 5))


# --------------------------------------------------------------------------- lifetime
def test_lifetime_keeps_each_features_k_largest_over_the_batch_in_training():
    z = distinct_code(8, 5)
    out = LifetimeSparsity(k=0.25).train()(z)
    reference = mask_of_k_largest_per_row(z.t(), 2).t()  # 25% of 8 samples = 2 per feature
    assert torch.equal(out, torch.where(reference, z, torch.zeros_like(z)))


def test_lifetime_is_identity_in_eval_mode():
    z = distinct_code(8, 5)
    assert torch.equal(LifetimeSparsity(k=0.25).eval()(z), z)


def test_lifetime_short_last_batch_and_counts():
    z = distinct_code(3, 4)
    assert torch.equal((LifetimeSparsity(k=0.5).train()(z) != 0).sum(0), torch.full((4,), 2))  # round(1.5)
    assert torch.equal((LifetimeSparsity(k=5).train()(z) != 0).sum(0), torch.full((4,), 3))  # count > batch
    assert torch.equal((LifetimeSparsity(k=0.01).train()(z) != 0).sum(0), torch.ones(4, dtype=torch.long))


def test_lifetime_gradient_flows_only_through_winners():
    z = distinct_code(8, 5).requires_grad_()
    out = LifetimeSparsity(k=2).train()(z)
    out.sum().backward()
    assert torch.equal(z.grad, (out != 0).float())


# ------------------------------------------------------------------------ penalties
def test_l1_penalty_equals_its_formula():
    z = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -0.5]])
    expected = 1e-3 * (1 + 2 + 0 + 0.5 + 0 + 0.5) / 6
    assert L1Sparsity(weight=1e-3).penalty(z).item() == pytest.approx(expected, rel=1e-6)


def test_kl_penalty_equals_its_formula():
    z = torch.tensor([[0.1, 0.9, 0.3], [0.3, 0.5, 0.1]])
    rho, weight = 0.05, 0.1
    expected = 0.0
    for j in range(3):
        rho_hat = (z[0, j].item() + z[1, j].item()) / 2
        expected += rho * math.log(rho / rho_hat) + (1 - rho) * math.log((1 - rho) / (1 - rho_hat))
    expected = weight * expected / 3
    kl = KLSparsity(weight=weight, rho=rho, normalize="none")
    assert kl.penalty(z).item() == pytest.approx(expected, rel=1e-5)


def test_kl_penalty_is_finite_when_codes_saturate_at_0_and_1():
    z = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.2]], requires_grad=True)
    penalty = KLSparsity(weight=1.0, rho=0.05, normalize="none").penalty(z)
    penalty.backward()
    assert torch.isfinite(penalty) and penalty.item() > 0
    assert torch.isfinite(z.grad).all()


def test_kl_normalize_sigmoid_maps_an_unbounded_code_first():
    z = torch.tensor([[-3.0, 2.0], [1.0, 0.0]])
    direct = KLSparsity(weight=1.0, rho=0.05, normalize="none").penalty(torch.sigmoid(z))
    assert KLSparsity(weight=1.0, rho=0.05, normalize="sigmoid").penalty(z).item() == pytest.approx(direct.item())


def test_kl_auto_uses_a_sigmoid_code_as_is_and_maps_other_codes():
    assert validate(small_run("sparsity=kl", "model.code_activation=sigmoid")).sparsity.normalize == "none"
    assert validate(small_run("sparsity=kl")).sparsity.normalize == "sigmoid"


# ------------------------------------------------------------------------ batch top-k
def test_batch_topk_keeps_exactly_k_times_batch_entries_in_training():
    z = distinct_code(6, 10)
    out = BatchTopKSparsity(k=3, aux_weight=0).train()(z)
    assert int((out != 0).sum()) == 3 * 6
    smallest_kept = out[out != 0].min()
    assert torch.all(z[out == 0] < smallest_kept)  # the largest entries of the whole batch


def test_batch_topk_evaluation_uses_the_training_threshold_or_per_sample_topk():
    z = distinct_code(6, 10)
    method = BatchTopKSparsity(k=3, aux_weight=0, threshold_momentum=1.0).train()
    kept = method(z)
    threshold = kept[kept != 0].min()
    assert method.threshold.item() == pytest.approx(threshold.item())
    method.eval()
    assert torch.equal(method(z), torch.where(z > threshold, z, torch.zeros_like(z)))
    per_sample = BatchTopKSparsity(k=3, aux_weight=0, eval_mode="topk").eval()(z)
    assert torch.equal((per_sample != 0).sum(1), torch.full((6,), 3))


# ------------------------------------------------------------------------------ AuxK
def make_decoder(features: int = 10, pixels: int = 12) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(features, pixels)


def test_auxk_is_zero_when_no_latent_is_dead():
    method = TopKSparsity(k=3, aux_weight=1 / 32, dead_after=100)
    method.bind(code_features=10, batch_size=6)
    method.train()
    code = distinct_code(6, 10)
    method(code)
    loss = method.auxiliary(code, torch.randn(6, 12), make_decoder())
    assert loss.item() == 0.0


def test_auxk_dead_latents_reconstruct_the_residual_and_get_the_gradient():
    method = TopKSparsity(k=3, aux_weight=0.5, aux_k=2, dead_after=100)
    method.bind(code_features=10, batch_size=6)
    method.train()
    dead = torch.tensor([0, 4, 7])
    method.samples_since_fired[dead] = 1000
    decoder = make_decoder()
    code = distinct_code(6, 10).requires_grad_()
    residual = torch.randn(6, 12, generator=torch.Generator().manual_seed(3))
    loss = method.auxiliary(code, residual, decoder)

    # Reference: each sample's 2 largest dead entries, decoded without the bias.
    c = code.detach()
    aux_code = torch.zeros_like(c)
    for i in range(6):
        best = sorted(dead.tolist(), key=lambda j: c[i, j].item(), reverse=True)[:2]
        aux_code[i, best] = c[i, best]
    estimate = aux_code @ decoder.weight.detach().t()
    expected = 0.5 * ((estimate - residual) ** 2).mean() / (residual**2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    loss.backward()
    alive = torch.ones(10, dtype=torch.bool)
    alive[dead] = False
    assert torch.all(code.grad[:, alive] == 0)
    assert code.grad[:, dead].abs().sum() > 0


def test_topk_tracks_how_long_each_latent_has_not_fired():
    method = TopKSparsity(k=1, aux_weight=0)
    method.bind(code_features=3, batch_size=4)
    method.train()
    code = torch.tensor([[3.0, 1.0, 0.0]] * 4)  # only feature 0 fires
    method(code)
    method(code)
    assert method.samples_since_fired.tolist() == [0, 8, 8]


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides, key",
    inner_loop([
        (["sparsity=topk", "sparsity.k=0"], "sparsity.k"),
        (["sparsity=topk", "sparsity.aux_weight=-1"], "sparsity.aux_weight"),
        (["sparsity=lifetime", "sparsity.k=0"], "sparsity.k"),
        (["sparsity=lifetime", "sparsity.k=1.5"], "sparsity.k"),
        (["sparsity=l1", "sparsity.weight=-0.1"], "sparsity.weight"),
        (["sparsity=kl", "sparsity.rho=0"], "sparsity.rho"),
        (["sparsity=kl", "sparsity.rho=1.2"], "sparsity.rho"),
        (["sparsity=kl", "sparsity.weight=-1"], "sparsity.weight"),
        (["sparsity=kl", "sparsity.normalize=none"], "sparsity.normalize"),
        (["sparsity=batch_topk", "sparsity.eval_mode=nearest"], "sparsity.eval_mode"),
    ], 3),
)
def test_bad_sparsity_values_fail_validation_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(small_run(*overrides))
    assert err.value.key == key
    assert "allowed" in str(err.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["sparsity=topk", "sparsity.k=65"], "code size, 64"),
        (["sparsity=batch_topk", "sparsity.k=100"], "code size, 64"),
        (["sparsity=lifetime", "sparsity.k=65", "trainer.batch_size=64"], "trainer.batch_size (64)"),
    ],
)
def test_settings_that_cannot_fit_the_built_model_fail_before_training(overrides, expected):
    cfg = validate(small_run(*overrides))
    with pytest.raises(ConfigError, match=r"sparsity\.k") as err:
        build_model(cfg, (1, 28, 28))
    assert expected in str(err.value)


# ------------------------------------------------------------------- in training
def train_small(tmp_path, name, *overrides):
    run_dir = tmp_path / name
    run_training(small_run("trainer.epochs=3", *overrides), run_dir)
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


def test_topk5_training_gives_at_most_5_active_features(tmp_path):
    metrics, _ = train_small(tmp_path, "topk5", "sparsity=topk", "sparsity.k=5")
    assert metrics["val_l0"] <= 5
    assert math.isfinite(metrics["val_mse"])


def test_l1_and_kl_lower_activity_against_no_sparsity(tmp_path):
    base, _ = train_small(tmp_path, "none", "model.code_activation=sigmoid")
    l1, _ = train_small(tmp_path, "l1", "model.code_activation=sigmoid", "sparsity=l1", "sparsity.weight=0.1")
    kl, _ = train_small(tmp_path, "kl", "model.code_activation=sigmoid", "sparsity=kl", "sparsity.weight=1.0")
    assert l1["val_mean_activation"] < base["val_mean_activation"]
    assert kl["val_mean_activation"] < base["val_mean_activation"]
    assert l1["train_penalty"] > 0 and kl["train_penalty"] > 0


# In the inner loop, topk trains in test_topk5_training_gives_at_most_5_active_features (and
# test_conv.py), l1 and kl in test_l1_and_kl_lower_activity_against_no_sparsity.
@pytest.mark.parametrize("method", [pytest.param("topk", marks=pytest.mark.slow), "lifetime",
                                    pytest.param("l1", marks=pytest.mark.slow), pytest.param("kl", marks=pytest.mark.slow),
                                    "batch_topk"])
def test_every_method_trains_with_finite_losses_and_writes_latent_metrics(tmp_path, method):
    metrics, run_dir = train_small(tmp_path, method, f"sparsity={method}", "trainer.epochs=1")
    for key in ("train_loss", "train_mse", "train_penalty", "train_aux", "val_mse"):
        assert math.isfinite(metrics[key]), key
    for key in ("val_l0", "dead_fraction", "val_mean_activation"):
        assert key in metrics
    assert 0 <= metrics["dead_fraction"] <= 1
    for name in ("codes", "dictionary", "reconstructions"):
        assert (run_dir / "images" / f"{name}.png").is_file()


def test_val_mse_counts_reconstruction_only(tmp_path):
    """Recompute the validation MSE from the best checkpoint: the penalty must not be in it."""
    from aeexp.checkpoints import load_checkpoint
    from aeexp.training.run import load_data

    cfg = small_run("trainer.epochs=1", "sparsity=kl", "sparsity.weight=5.0")
    run_training(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cfg = validate(cfg)
    model = build_model(cfg, (1, 28, 28))
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"])
    model.eval()
    images = load_data(cfg).val_images.float() / 255
    with torch.no_grad():
        x_hat, _ = model(images)
    assert metrics["val_mse"] == pytest.approx(((x_hat - images) ** 2).mean().item(), rel=1e-5)
    assert metrics["train_loss"] > metrics["train_mse"]
