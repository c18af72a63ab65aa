"""model=sae and the SAE conventions of topk / batch_topk, against hand computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import small_run

from aeexp.models.sae import build_sae, geometric_median
from aeexp.runs import load_run
from aeexp.sparsity.base import Sparsity
from aeexp.sparsity.topk import BatchTopKSparsity, TopKSparsity, batch_topk_mask
from aeexp.training import model_hooks
from aeexp.training.run import run_training



def sae(input_shape=(12,), latent_dim=20, bottleneck=None, **options):
    torch.manual_seed(0)
    return build_sae(input_shape=input_shape, bottleneck=bottleneck or Sparsity(), latent_dim=latent_dim, **options)


def data(n=256, d=12, seed=1, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).float() * 2 + offset


# ------------------------------------------------------------------------ the model
def test_sae_shapes_on_images_and_vectors_and_b_dec_counted_once():
    images = sae((1, 6, 6), latent_dim=10, bottleneck=TopKSparsity(k=3))
    x_hat, z, code = images.forward_parts(torch.rand(4, 1, 6, 6))
    assert x_hat.shape == (4, 1, 6, 6) and z.shape == code.shape == (4, 10)
    assert torch.equal((z != 0).sum(1), torch.full((4,), 3))
    vectors = sae((12,), latent_dim=20)
    assert vectors(torch.randn(5, 12))[0].shape == (5, 12)
    # W_enc, b_enc, W_dec, b_dec: b_dec is read by the encoder but registered once.
    assert sum(p.numel() for p in vectors.parameters()) == 12 * 20 + 20 + 20 * 12 + 12
    assert set(vectors.state_dict()) == {"encoder.linear.weight", "encoder.linear.bias", "decoder.linear.weight",
                                         "decoder.linear.bias", "decoder.input_scale"}
    assert torch.equal(vectors.encoder.linear.weight, vectors.W_dec.t())  # encoder starts as the transpose
    assert vectors.dictionary().shape == (20, 12)


def test_sae_forward_is_the_formula():
    model = sae(pre_bias=True, normalize_input=True, b_dec_init="mean", code_activation="relu")
    x = data()
    model.initialize_from_data(x)
    s, b = model.decoder.input_scale, model.decoder.linear.bias
    code = torch.relu((x * s - b) @ model.encoder.linear.weight.t() + model.encoder.linear.bias)
    x_hat = (code @ model.W_dec.t() + b) / s
    got_hat, got_z, got_code = model.forward_parts(x)
    assert torch.allclose(got_code, code, atol=1e-5) and torch.allclose(got_hat, x_hat, atol=1e-5)


def test_pre_bias_with_b_dec_zero_equals_no_pre_bias_and_otherwise_shifts_the_input():
    x = data(16)
    plain, pre = sae(pre_bias=False), sae(pre_bias=True)
    assert torch.equal(plain(x)[0], pre(x)[0])
    with torch.no_grad():
        b = torch.randn(12)
        plain.decoder.linear.bias.copy_(b)
        pre.decoder.linear.bias.copy_(b)
    assert not torch.allclose(plain.encoder(x), pre.encoder(x))
    assert torch.allclose(pre.encoder(x), plain.encoder(x - b), atol=1e-6)


# ---------------------------------------------------------------- unit-norm decoder
def adam_steps(model, x, steps=5, scale=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        (scale * (model(x)[0] - x).pow(2).mean()).backward()
        model_hooks.before_optimizer_step(model)
        optimizer.step()
        model_hooks.after_optimizer_step(model)


def test_unit_norm_columns_hold_after_steps_and_the_gradient_is_orthogonal_to_each_column():
    model = sae(unit_norm_decoder=True, bottleneck=TopKSparsity(k=4, aux_weight=0))
    x = data(64)
    assert torch.allclose(model.W_dec.norm(dim=0), torch.ones(20), atol=1e-6)  # at initialisation
    adam_steps(model, x)
    assert torch.allclose(model.W_dec.norm(dim=0), torch.ones(20), atol=1e-6)
    # The projection: what is left of the gradient has no component along any column.
    model.zero_grad()
    (model(x)[0] - x).pow(2).mean().backward()
    raw = model.W_dec.grad.clone()
    model_hooks.before_optimizer_step(model)
    projected = model.W_dec.grad
    w = model.W_dec.detach()
    assert (projected * w).sum(0).abs().max() < 1e-6 * raw.abs().max()
    assert torch.allclose(projected, raw - w * (raw * w).sum(0), atol=1e-7)  # only that component removed
    assert not torch.allclose(projected, raw)  # and there was one to remove


def test_without_unit_norm_the_hooks_change_nothing():
    model = sae(unit_norm_decoder=False)
    x = data(32)
    (model(x)[0] - x).pow(2).mean().backward()
    weight, grad = model.W_dec.detach().clone(), model.W_dec.grad.clone()
    model_hooks.before_optimizer_step(model)
    model_hooks.after_optimizer_step(model)
    assert torch.equal(model.W_dec.grad, grad) and torch.equal(model.W_dec.detach(), weight)
    model_hooks.before_optimizer_step(torch.nn.Linear(2, 2))  # a model without hooks: nothing happens


def test_the_projection_commutes_with_grad_scaling_so_amp_may_project_before_unscale():
    x = data(32)
    plain, scaled = sae(unit_norm_decoder=True), sae(unit_norm_decoder=True)
    for model, s in ((plain, 1.0), (scaled, 1024.0)):
        (s * (model(x)[0] - x).pow(2).mean()).backward()
        model_hooks.before_optimizer_step(model)  # on the scaled gradient, as before scaler.unscale_
    assert torch.allclose(scaled.W_dec.grad / 1024.0, plain.W_dec.grad, rtol=1e-5, atol=1e-9)


# -------------------------------------------------------------- geometric median
def test_geometric_median_is_the_median_in_one_dimension():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [100.0]])
    assert geometric_median(points).item() == pytest.approx(2.0, abs=1e-4)


def test_geometric_median_of_known_configurations():
    # Equilateral triangle: its centre (the Fermat point). An angle >= 120 degrees: that vertex.
    triangle = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    assert torch.allclose(geometric_median(triangle), torch.tensor([1.0, 1 / math.sqrt(3.0)], dtype=torch.float64),
                          atol=1e-6)
    obtuse = torch.tensor([[0.0, 0.0], [-4.0, 0.5], [4.0, 0.5]])  # the angle at the origin is about 166 degrees
    assert torch.allclose(geometric_median(obtuse), torch.zeros(2, dtype=torch.float64), atol=1e-4)


def test_geometric_median_satisfies_the_optimality_condition_and_beats_the_mean():
    points = data(300, 8, seed=5).double()
    points[:30] += 50  # outliers pull the mean, not the median
    m = geometric_median(points)
    unit = (points - m) / (points - m).norm(dim=1, keepdim=True)
    assert unit.sum(0).norm() < 1e-4 * len(points)  # the sum of unit vectors to the points vanishes

    def cost(c):
        return (points - c).norm(dim=1).sum()

    assert cost(m) < cost(points.mean(0))
    for _ in range(20):  # no nearby point does better
        assert cost(m) <= cost(m + 1e-3 * torch.randn(8, dtype=torch.float64)) + 1e-9


def test_b_dec_init_mean_and_geometric_median_in_normalised_units():
    x = data()
    mean = sae(b_dec_init="mean")
    mean.initialize_from_data(x)
    assert torch.allclose(mean.decoder.linear.bias, x.double().mean(0).float(), atol=1e-5)
    median = sae(b_dec_init="geometric_median", normalize_input=True)
    median.initialize_from_data(x)
    s = median.decoder.input_scale.double()
    assert torch.allclose(median.decoder.linear.bias.double(), geometric_median(x.double() * s), atol=1e-5)
    zeros = sae()
    zeros.initialize_from_data(x)
    assert torch.equal(zeros.decoder.linear.bias, torch.zeros(12)) and zeros.decoder.input_scale.item() == 1.0


# ------------------------------------------------------------------ normalisation
def test_normalisation_gives_mean_squared_norm_d_and_comes_back_from_the_state_dict():
    x = data(offset=7.0)
    model = sae(normalize_input=True, b_dec_init="geometric_median", pre_bias=True)
    model.initialize_from_data(x)
    s = model.decoder.input_scale
    assert (x.double() * s.double()).pow(2).sum(1).mean().item() == pytest.approx(12.0, rel=1e-6)
    assert s.item() != pytest.approx(1.0)
    restored = sae(normalize_input=True, b_dec_init="geometric_median", pre_bias=True)
    restored.load_state_dict(model.state_dict())  # as load_run and resume do; no estimate
    assert restored.decoder.input_scale.item() == s.item()
    assert torch.equal(restored(x)[0], model(x)[0])


def test_the_hook_reads_the_head_of_the_training_split_as_floats():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    model = sae((1, 4, 4), latent_dim=6, normalize_input=True, init_sample_size=20)
    model_hooks.initialize_from_data(model, images)
    expected = math.sqrt(16 / (images[:20].double() / 255).pow(2).sum((1, 2, 3)).mean().item())
    assert model.decoder.input_scale.item() == pytest.approx(expected, rel=1e-6)
    model_hooks.initialize_from_data(torch.nn.Linear(2, 2), images)  # a model without the hook: nothing


# ------------------------------------------------------------------------ relu
@pytest.mark.parametrize("method", [TopKSparsity(k=3, aux_weight=0, relu=True),
                                    BatchTopKSparsity(k=3, aux_weight=0, relu=True)])
def test_relu_drops_negative_kept_values_and_their_gradients(method):
    z = torch.tensor([[5.0, -1.0, -2.0, -3.0, -4.0], [4.0, 3.0, -0.5, -6.0, -7.0]], requires_grad=True)
    out = method.train()(z)
    expected = torch.tensor([[5.0, 0, 0, 0, 0], [4.0, 3.0, 0, 0, 0]])
    assert torch.equal(out.detach(), expected)
    out.sum().backward()
    assert torch.equal(z.grad, (expected > 0).float())  # kept negatives pass no gradient
    without = type(method)(k=3, aux_weight=0).train()(z.detach())
    assert (without < 0).any()  # the default keeps negative values (the seed's convention)


def test_relu_batch_topk_evaluation_threshold_is_not_below_zero():
    method = BatchTopKSparsity(k=3, aux_weight=0, relu=True, threshold_momentum=1.0).train()
    method(torch.tensor([[5.0, -1.0, -2.0], [4.0, -3.0, -0.5]]))
    assert method.threshold.item() == 0.0
    out = method.eval()(torch.tensor([[1.0, -1.0, 0.0]]))
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 0.0]]))


# ---------------------------------------------------------------- batch top-k ties
def test_batch_topk_keeps_exactly_k_times_batch_at_ties_and_fired_counts_nonzero_outputs():
    method = BatchTopKSparsity(k=2, aux_weight=0)
    method.bind(code_features=8, batch_size=4)
    method.train()
    z = torch.zeros(4, 8)
    z[:, 0] = 1.0  # integer-valued: one 1 per sample, every other entry tied at 0
    assert int(batch_topk_mask(z, 2 * 4)[0].sum()) == 2 * 4  # `>=` the 8th value kept all 32
    assert torch.equal(method(z), z)
    # Only latent 0 fired: the kept zeros did not, so the others can count as dead for AuxK.
    assert method.samples_since_fired.tolist() == [0] + [4] * 7

    ties = torch.randint(0, 3, (6, 10), generator=torch.Generator().manual_seed(0)).float()
    mask, smallest = batch_topk_mask(ties, 18)
    assert int(mask.sum()) == 18
    assert torch.all(ties[~mask] <= smallest) and torch.all(ties[mask] >= smallest)
    assert int((ties[~mask] < smallest).sum()) == int((ties < smallest).sum())  # all above the cut kept
    kept = BatchTopKSparsity(k=3, aux_weight=0).train()(ties + 1)  # positive, heavily tied
    assert int((kept != 0).sum()) == 18


def test_batch_topk_runs_in_float64():
    method = BatchTopKSparsity(k=2, aux_weight=1.0, dead_after=1).double()
    method.bind(code_features=6, batch_size=4)
    method.train()
    z = torch.randint(-2, 3, (4, 6), dtype=torch.float64, requires_grad=True)
    out = method(z)
    assert out.dtype == torch.float64 and int(batch_topk_mask(z.detach(), 8)[0].sum()) == 8
    assert method.threshold.dtype == torch.float64
    method.samples_since_fired[:3] = 10
    decoder = torch.nn.Linear(6, 5).double()
    aux = method.auxiliary(z, torch.randn(4, 5, dtype=torch.float64), decoder)
    aux.backward()
    assert math.isfinite(aux.item())
    assert method.eval()(z).dtype == torch.float64


# ------------------------------------------------------------------------- AuxK
@pytest.mark.parametrize("normalize", ["mean_square", "variance"])
@pytest.mark.parametrize("relu", [False, True])
def test_auxk_normalisation_against_a_hand_computation(normalize, relu):
    method = TopKSparsity(k=2, aux_weight=0.25, aux_k=2, dead_after=10, aux_normalize=normalize, relu=relu)
    method.bind(code_features=6, batch_size=4)
    method.train()
    dead = [1, 3, 4]
    method.samples_since_fired[dead] = 100
    torch.manual_seed(0)
    decoder = torch.nn.Linear(6, 5)
    code = torch.randn(4, 6)
    residual = torch.randn(4, 5) + 2.0  # a mean far from 0 makes the two divisors differ
    loss = method.auxiliary(code, residual, decoder)

    # By hand: each sample's 2 largest dead entries (through the ReLU), decoded without the bias.
    def value(i, f):
        return max(code[i, f].item(), 0.0) if relu else code[i, f].item()

    total, squares = 0.0, 0.0
    means = [sum(residual[i, j].item() for i in range(4)) / 4 for j in range(5)]
    for i in range(4):
        best = sorted(dead, key=lambda f: code[i, f].item(), reverse=True)[:2]
        for j in range(5):
            estimate = sum(value(i, f) * decoder.weight[j, f].item() for f in best)
            total += (estimate - residual[i, j].item()) ** 2
            centre = means[j] if normalize == "variance" else 0.0
            squares += (residual[i, j].item() - centre) ** 2
    expected = 0.25 * (total / 20) / (squares / 20)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------- training runs
SAE_RUN = ("model=sae", "model.latent_dim=48", "sparsity=topk", "sparsity.k=6", "trainer.epochs=1",
           "trainer.num_threads=1", "trainer.image_every=0")


def test_train_sae_with_topk_on_synthetic_images(tmp_path):
    cfg = small_run(*SAE_RUN, "model.pre_bias=true", "model.unit_norm_decoder=true", "sparsity.relu=true",
                    "model.b_dec_init=geometric_median", "model.normalize_input=true")
    metrics = run_training(cfg, tmp_path)
    assert metrics["status"] == "completed" and math.isfinite(metrics["val_mse"])
    loaded = load_run(tmp_path, which="last")
    assert loaded.model.dictionary().shape == (48, 784)
    # the scale estimated at the start is in the checkpoint; the columns stayed at unit norm
    assert loaded.model.decoder.input_scale.item() != 1.0
    assert torch.allclose(loaded.model.W_dec.norm(dim=0), torch.ones(48), atol=1e-5)


def test_a_fresh_run_initialises_from_data_and_resume_restores_without_estimating(tmp_path, monkeypatch):
    cfg = small_run(*SAE_RUN, "model.normalize_input=true", "model.b_dec_init=mean", "model.pre_bias=true")
    run_training(cfg, tmp_path)
    first = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert first["decoder.input_scale"].item() != 1.0
    from aeexp.models.sae import SparseAutoencoder

    def refuse(self, sample):
        raise AssertionError("initialize_from_data ran on resume")

    monkeypatch.setattr(SparseAutoencoder, "initialize_from_data", refuse)
    resumed = small_run(*SAE_RUN, "model.normalize_input=true", "model.b_dec_init=mean", "model.pre_bias=true",
                        "trainer.epochs=2", "trainer.resume=true")
    metrics = run_training(resumed, tmp_path)
    assert metrics["epoch"] == 2
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert state["decoder.input_scale"].item() == first["decoder.input_scale"].item()
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
