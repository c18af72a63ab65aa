"""The faster evaluation paths against independent computations.

- The linear probe computes its logits class-major (classes, samples) for a faster
  log-softmax; fitted to convergence it must give scikit-learn's logistic regression with the
  same penalty.
- The frozen semi-supervised head trains on precomputed codes; it must end where the head
  trained through the frozen encoder ends (same minibatches, same updates), and
  ``semi_supervised`` must give the same rows whether it is handed the codes or computes them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from aeexp.evaluation.probes import Standardizer, fit_softmax, knn_accuracy
from aeexp.evaluation.semi_supervised import (
    CodeClassifier, head_accuracy, semi_supervised, train_classifier, train_head_on_codes,
)
from aeexp.evaluation.semi_supervised import test_accuracy as through_encoder_accuracy  # not a test itself


def blobs(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes (not separable, so the penalised optimum is well inside)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g)
    return centres[labels] + 1.5 * torch.randn(n, dim, generator=g), labels


def test_probe_converges_to_sklearns_logistic_regression():
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    features, labels = blobs(600, 6, 3, seed=1)
    features = Standardizer(features)(features)
    l2 = 1e-2
    linear = fit_softmax(features, labels, 3, l2=l2, max_iter=500, progress=False)
    # sklearn minimises C * sum(CE) + ||W||^2 / 2 (intercept unpenalised): the same optimum as
    # mean(CE) + l2/2 ||W||^2 when C = 1 / (l2 n).
    reference = sklearn_linear.LogisticRegression(C=1.0 / (l2 * len(features)), tol=1e-10, max_iter=10_000)
    reference.fit(features.double().numpy(), labels.numpy())
    with torch.no_grad():
        ours = torch.softmax(linear(features), 1).double()
    theirs = torch.from_numpy(reference.predict_proba(features.double().numpy()))
    assert torch.allclose(ours, theirs, atol=2e-4)
    # The weights are identifiable up to a common shift of every class's row; compare centred.
    w = linear.weight.detach().double()
    w_ref = torch.from_numpy(reference.coef_)
    assert torch.allclose(w - w.mean(0), w_ref - w_ref.mean(0), atol=2e-3)


class TinyEncoder(nn.Module):
    """An autoencoder's encode() for the tests: flatten, Linear, ReLU."""

    def __init__(self, pixels: int, code: int):
        super().__init__()
        self.linear = nn.Linear(pixels, code)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x.flatten(1)))


def test_frozen_head_on_codes_equals_the_head_trained_through_the_frozen_encoder():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(300) % 3
    encoder = TinyEncoder(16, 5).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        codes = encoder.encode(images.float() / 255)
    scale = Standardizer(codes)
    torch.manual_seed(3)
    through = CodeClassifier(encoder, scale, 8, 3)
    on_codes = CodeClassifier(encoder, scale, 8, 3)
    on_codes.head.load_state_dict(through.head.state_dict())
    common = dict(steps=40, lr=1e-2, weight_decay=1e-4, batch_size=64, seed=5, desc="", progress=False)
    train_classifier(through, list(through.head.parameters()), images, labels, **common)
    train_head_on_codes(on_codes, codes, labels, **common)
    for a, b in zip(through.head.parameters(), on_codes.head.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert head_accuracy(on_codes, codes, labels) == through_encoder_accuracy(through, images, labels, batch_size=128)


def tiny_semi_supervised_case() -> tuple[SimpleNamespace, SimpleNamespace]:
    """Images and labels of 3 classes (120 to train, 60 to test) and small semi-supervised settings."""
    g = torch.Generator().manual_seed(1)
    data = SimpleNamespace(train_images=torch.randint(0, 256, (120, 1, 4, 4), dtype=torch.uint8, generator=g),
                           train_labels=torch.arange(120) % 3,
                           test_images=torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8, generator=g),
                           test_labels=torch.arange(60) % 3)
    settings = SimpleNamespace(labels_per_class=[4, 30], head_hidden=8, head_steps=6, head_lr=1e-2,
                               finetune_lr=1e-3, head_batch_size=32, weight_decay=1e-4, batch_size=50,
                               seed=0, progress=False, step_threads=1)
    return data, settings


def test_semi_supervised_rows_are_the_same_with_precomputed_codes():
    torch.manual_seed(0)
    data, settings = tiny_semi_supervised_case()
    model = TinyEncoder(16, 5).eval()
    fresh = lambda: TinyEncoder(16, 5)  # noqa: E731
    with torch.no_grad():
        train_codes = model.encode(data.train_images.float() / 255)
        test_codes = model.encode(data.test_images.float() / 255)
    handed = semi_supervised(model, fresh, data, settings, torch.device("cpu"), train_codes, test_codes)
    computed = semi_supervised(model, fresh, data, settings, torch.device("cpu"))
    assert handed == computed
    assert [row["labels"] for row in handed] == [12, 90]


def test_scratch_accuracies_are_computed_once_per_fresh_model_and_reused():
    torch.manual_seed(0)
    data, settings = tiny_semi_supervised_case()
    kept: dict[str, dict[str, float]] = {}
    computed: list[str] = []

    def cache(key, compute):
        text = repr(sorted(key.items()))
        if text not in kept:
            computed.append(text)
            kept[text] = compute()
        return kept[text]

    fresh = lambda: TinyEncoder(16, 5)  # noqa: E731
    two_trained_models = [TinyEncoder(16, 5).eval(), TinyEncoder(16, 5).eval()]
    uncached = [semi_supervised(m, fresh, data, settings, torch.device("cpu")) for m in two_trained_models]
    cached = [semi_supervised(m, fresh, data, settings, torch.device("cpu"), scratch_cache=cache)
              for m in two_trained_models]
    assert cached == uncached  # the same rows, scratch included
    assert len(computed) == 1  # both runs share one fresh architecture: scratch trained once
    assert uncached[0][0]["frozen"] != uncached[1][0]["frozen"] or uncached[0][1]["frozen"] != uncached[1][1]["frozen"]
    wider = lambda: TinyEncoder(16, 6)  # noqa: E731  another architecture: its own entry
    semi_supervised(two_trained_models[0], wider, data, settings, torch.device("cpu"), scratch_cache=cache)
    assert len(computed) == 2


def reference_knn(train, train_labels, test, test_labels, k):
    """Exact float64 distances, a full sort, and the same vote (1 per neighbour + a tiny bonus
    for rank, float32 as in evaluation: ranks (1, 4) against (2, 3) tie exactly and rounding
    decides, so the vote is the same code; the neighbours are what is checked)."""
    nearest = torch.cdist(test.double(), train.double()).argsort(dim=1, stable=True)[:, :k]
    votes = torch.zeros(len(test), int(train_labels.max()) + 1)
    votes.scatter_add_(1, train_labels[nearest], (1.0 + 1e-3 * torch.arange(k, 0, -1, dtype=torch.float32) / k)
                       .expand(len(test), k))
    return (votes.argmax(1) == test_labels).double().mean().item()


@pytest.mark.parametrize("k", [1, 4, 5])
def test_blocked_knn_equals_exact_distances(k):
    train, train_labels = blobs(700, 5, 4, seed=2)
    test, test_labels = blobs(230, 5, 4, seed=3)
    expected = reference_knn(train, train_labels, test, test_labels, k)
    # blocks of 64 training codes (11 blocks, the last short) and chunks of 50 queries: the merge is exercised
    assert knn_accuracy(train, train_labels, test, test_labels, k, chunk=50, train_block=64, progress=False) == expected
    assert knn_accuracy(train, train_labels, test, test_labels, k, progress=False) == expected  # one block
    if k == 1:  # no vote to break: scikit-learn's classifier is a third opinion
        neighbors = pytest.importorskip("sklearn.neighbors")
        theirs = neighbors.KNeighborsClassifier(1, algorithm="brute").fit(train.numpy(), train_labels.numpy())
        assert theirs.score(test.numpy(), test_labels.numpy()) == pytest.approx(expected)


@pytest.mark.slow  # trains and fully evaluates three tiny runs (~5 s); the fast loop covers the cache's reuse above
def test_runs_differing_in_topk_k_get_their_own_scratch_entry_and_a_learning_rate_sweep_shares_one(
        tmp_path, monkeypatch):
    import aeexp.evaluation.semi_supervised as semi
    from aeexp.evaluation import check_settings, evaluate_run
    from aeexp.evaluation.baseline_cache import forget_memory
    from aeexp.training.run import run_training
    from conftest import small_run

    computed = []
    real = semi.scratch_accuracies
    monkeypatch.setattr(semi, "scratch_accuracies", lambda *a, **kw: computed.append(1) or real(*a, **kw))
    tiny = ("dataset.height=6", "dataset.width=6", "trainer.epochs=1", "trainer.image_every=0", "model.latent_dim=8",
            "sparsity=topk", f"paths.cache_dir={tmp_path / 'cache'}")
    settings = check_settings(dict(probe_max_iter=5, labels_per_class=[5], head_steps=3, progress=False,
                                   noise_levels=[0.2], figures=False))
    forget_memory()
    rows = {}
    for name, extra in (("k2", ["sparsity.k=2"]), ("k3", ["sparsity.k=3"]), ("k2_lr", ["sparsity.k=2", "optimizer.lr=0.01"])):
        run_training(small_run(*tiny, *extra), tmp_path / name)
        rows[name] = evaluate_run(tmp_path / name, settings, "cpu")["semi_supervised"]
    assert len(computed) == 2  # k=2 and k=3: the same weights and repr, different bottlenecks; the lr run reuses k=2's
    assert rows["k2"][0]["scratch"] == rows["k2_lr"][0]["scratch"]
