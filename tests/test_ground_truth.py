"""The ground-truth benchmark: dataset=sparse_features and the feature-recovery metric (MMCS)."""

from __future__ import annotations

import math

import pytest
import torch

from aeexp.data.sparse_features import SparseFeaturesConfig, generate, sample_activations, true_dictionary
from aeexp.metrics import decoder_atoms, feature_recovery, max_cosines

SMALL = dict(dim=16, num_features=48, active=3.0, num_train=2000, num_val=300, num_test=300)


# ------------------------------------------------------------------ the generator
def test_shapes_unit_norm_and_labels():
    s = generate(**SMALL)
    assert s.train.shape == (2000, 16) and s.val.shape == (300, 16) and s.test.shape == (300, 16)
    assert s.train.dtype == s.val.dtype == s.test.dtype == torch.float32
    assert s.dictionary.shape == (48, 16)
    torch.testing.assert_close(s.dictionary.norm(dim=1), torch.ones(48))
    assert s.train_labels.shape == (2000,) and s.train_labels.dtype == torch.long
    assert (s.train_labels == 0).all()  # no labels by default
    labelled = generate(**SMALL, labels="strongest")
    assert torch.equal(labelled.train, s.train)
    assert 0 <= labelled.train_labels.min() and labelled.train_labels.max() <= 48  # 48: no feature fired
    assert len(labelled.train_labels.unique()) > 40
    assert s.firing_probability == pytest.approx(3 / 48)


def test_seeded_and_streams_independent():
    a, b, c = generate(**SMALL), generate(**SMALL), generate(**{**SMALL, "seed": 1})
    for split in ("train", "val", "test", "dictionary"):
        assert torch.equal(getattr(a, split), getattr(b, split))
        assert not torch.equal(getattr(a, split), getattr(c, split))
    more = generate(**{**SMALL, "num_train": 3000})  # validation and test do not depend on num_train
    assert torch.equal(a.val, more.val) and torch.equal(a.test, more.test)
    correlated = generate(**SMALL, correlated=True)  # the variants share their dictionary
    assert torch.equal(a.dictionary, correlated.dictionary) and not torch.equal(a.train, correlated.train)
    assert torch.equal(true_dictionary(16, 48, 0), a.dictionary)


def test_noise_free_samples_lie_in_the_span_of_their_features():
    s = generate(**{**SMALL, "noise_std": 0.0, "magnitude": "constant", "active": 1.0, "num_features": 16})
    # One feature at a time often: a sample with exactly one active feature is that feature.
    norms = s.train.norm(dim=1)
    single = s.train[(norms - 1).abs() < 1e-6]
    assert len(single) > 100
    assert max_cosines(single, s.dictionary).min() > 1 - 1e-5


@pytest.mark.parametrize("correlated", [False, True])
def test_sparsity_level_as_configured(correlated):
    g = torch.Generator().manual_seed(0)
    factors = torch.nn.functional.normalize(torch.randn(200, 4, generator=g), dim=1) if correlated else None
    a = sample_activations(20000, 200, 5 / 200, "exponential", g, factors, correlation=0.6)
    active = (a > 0).sum(1).double()
    assert active.mean().item() == pytest.approx(5.0, rel=0.05)  # each feature keeps its probability
    assert (a >= 0).all()
    firing = (a > 0).double().mean(0)
    assert firing.mean().item() == pytest.approx(5 / 200, rel=0.05)
    if correlated:  # co-firing: the count per sample spreads far beyond a binomial's
        assert active.var().item() > 3 * active.mean().item()
    else:
        assert active.var().item() == pytest.approx(200 * (5 / 200) * (1 - 5 / 200), rel=0.1)
    magnitudes = a[a > 0]
    assert magnitudes.mean().item() == pytest.approx(1.0, rel=0.05)


def test_probability_overrides_active_and_magnitudes():
    s = generate(**{**SMALL, "probability": 0.25})
    assert s.firing_probability == 0.25
    g = torch.Generator().manual_seed(0)
    uniform = sample_activations(4000, 10, 0.5, "uniform", g)
    assert 0 < uniform[uniform > 0].min() and uniform.max() <= 2
    constant = sample_activations(100, 10, 0.5, "constant", g)
    assert set(constant.unique().tolist()) <= {0.0, 1.0}


def test_config_refuses_bad_values():
    from aeexp.config import ConfigError

    for bad in ({"active": 0}, {"active": 2000}, {"probability": 1.5}, {"magnitude": "gamma"},
                {"correlation": 1.0}, {"noise_std": -1}, {"dim": 0}, {"labels": "yes"}):
        with pytest.raises(ConfigError):
            SparseFeaturesConfig(**bad)


# ------------------------------------------------------------------ MMCS
def test_mmcs_against_a_hand_computation():
    true = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    atoms = torch.tensor([[2.0, 0.0, 0.0], [0.0, -3.0, 4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # cosines by hand: feature 0 -> atom 0: 1; feature 1 -> |0 - 3| / 5 = 0.6 (atom 1) vs 1/sqrt(3)
    # = 0.577 (atom 3): 0.6; feature 2 -> atom 0: 0.6, atom 1: |-2.4| / 5 = 0.48, atom 3: 1.4 / sqrt(3)
    # = 0.808: 0.808. The zero atom (dead latent) matches nothing.
    expected = [1.0, 0.6, 1.4 / math.sqrt(3)]
    torch.testing.assert_close(max_cosines(true, atoms), torch.tensor(expected, dtype=torch.float64))
    r = feature_recovery(true, atoms)
    assert r["mmcs"] == pytest.approx(sum(expected) / 3)
    assert r["recovered_90"] == pytest.approx(1 / 3)
    assert feature_recovery(true, atoms, threshold=0.8)["recovered_80"] == pytest.approx(2 / 3)


def test_mmcs_of_a_permuted_rescaled_sign_flipped_copy_is_one_and_of_a_random_dictionary_small():
    d, F = 64, 256
    true = true_dictionary(d, F, seed=3)
    g = torch.Generator().manual_seed(1)
    signs = torch.where(torch.rand(F, 1, generator=g) < 0.5, -1.0, 1.0)
    copy = (true * signs * (torch.rand(F, 1, generator=g) + 0.5))[torch.randperm(F, generator=g)]
    assert feature_recovery(true, copy) == {"mmcs": pytest.approx(1.0), "recovered_90": 1.0}
    random = feature_recovery(true, torch.randn(F, d, generator=g))
    # Max |cos| of F random directions in d dimensions: about sqrt(2 ln(2F) / d) = 0.32.
    assert 0.2 < random["mmcs"] < 0.45 and random["recovered_90"] == 0.0


def test_decoder_atoms_are_the_columns_of_an_affine_decoder():
    from aeexp.models.autoencoder import Autoencoder

    decoder = torch.nn.Linear(5, 7)
    model = Autoencoder(torch.nn.Linear(7, 5), torch.nn.Identity(), decoder)
    model.train()
    atoms = decoder_atoms(model, 5, chunk=2)
    torch.testing.assert_close(atoms, decoder.weight.detach().T)
    assert model.training  # left as it was


# ------------------------------------------------------------------ through the framework
TINY_BENCHMARK = ("experiment=sae_topk", "dataset.dim=32", "dataset.num_features=48", "dataset.active=2",
                  "dataset.num_train=4096", "dataset.num_val=512", "dataset.num_test=512", "model.latent_dim=48",
                  "sparsity.k=2", "optimizer.lr=3e-3", "trainer.batch_size=32", "trainer.epochs=6", "trainer.image_every=0",
                  "trainer.progress=false", "device=cpu", "trainer.num_threads=1")


def test_registered_dataset_returns_vectors_with_the_true_dictionary():
    from aeexp.registry import DATASETS
    from conftest import compose

    cfg = compose("dataset=sparse_features", "dataset.num_train=500", "dataset.num_val=50", "dataset.num_test=60")
    splits = DATASETS.build(cfg.dataset)
    assert splits.kind == "vectors" and splits.shape == (256,) and splits.train_images.dtype == torch.float32
    assert (len(splits.train_images), len(splits.val_images), len(splits.test_images)) == (500, 50, 60)
    assert torch.equal(splits.ground_truth, true_dictionary(256, 1024, 0))
    kept = splits.without_test().to("cpu").limited(10, 10)  # what the trainer sees keeps it
    assert torch.equal(kept.ground_truth, splits.ground_truth)


@pytest.mark.slow  # trains and evaluates; the inner loop checks MMCS against hand computations
def test_a_tiny_recovery_run_beats_a_random_dictionary_by_a_wide_margin(tmp_path):
    """sae_topk's recipe on d=32, F=48 (2 active per sample): a few epochs recover most features,
    and the figures reach metrics.json, TensorBoard, evaluate.py's metrics and its table."""
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aeexp.evaluation import check_settings, evaluate_run
    from aeexp.evaluation.report import summary_table
    from aeexp.training.run import run_training
    from conftest import compose

    metrics = run_training(compose(*TINY_BENCHMARK), tmp_path / "run")
    truth = true_dictionary(32, 48, 0)
    chance = feature_recovery(truth, torch.randn(48, 32, generator=torch.Generator().manual_seed(123)))["mmcs"]
    assert chance < 0.7
    assert metrics["mmcs"] > 0.85 and metrics["mmcs"] > chance + 0.3, (metrics["mmcs"], chance)  # 0.93 vs 0.42
    assert metrics["recovered_90"] > 0.5
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert len(events.Scalars("features/mmcs")) == 6 and "features/recovered_90" in events.Tags()["scalars"]

    settings = check_settings(OmegaConf.create({"progress": False, "figures": False}))
    evaluated = evaluate_run(tmp_path / "run", settings, "cpu")
    assert evaluated["true_features"] == 48
    best_epoch = evaluated["checkpoint_epoch"]
    assert evaluated["mmcs"] == pytest.approx(events.Scalars("features/mmcs")[best_epoch - 1].value, abs=1e-6)
    assert "true features" in summary_table(evaluated) and "MMCS" in summary_table(evaluated)


def test_data_without_ground_truth_records_no_recovery(tmp_path):
    from aeexp.training.run import run_training
    from conftest import compose

    metrics = run_training(compose("experiment=sae_topk", "dataset=synthetic", "dataset.num_train=128",
                                   "dataset.num_val=64", "model.latent_dim=32", "debug=fast", "trainer.progress=false",
                                   "device=cpu"), tmp_path / "run")
    assert "mmcs" not in metrics and "recovered_90" not in metrics


# ------------------------------------------------------------------ scripts/reproduce.py's section
def _reproduce():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_runs_the_ground_truth_experiments_on_their_own_data(tmp_path):
    reproduce = _reproduce()
    args = reproduce.parse_args(["--ground-truth", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert args.names == list(reproduce.GROUND_TRUTH) and args.merge
    assert not reproduce.parse_args(["--experiments", "fc_shallow,sae_topk", "--runs", str(tmp_path)]).merge
    for name in args.names:
        overrides = reproduce.train_overrides(name, args)
        assert not any(o.startswith("dataset=") for o in overrides)  # --dataset is for the image experiments
    assert reproduce.train_overrides("sae_topk_correlated", args)[:2] == ["experiment=sae_topk", "dataset.correlated=true"]
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--ground-truth", "--experiments", "sae_topk"])


def test_reproduce_merges_its_section_into_an_existing_report(tmp_path):
    reproduce = _reproduce()
    report = tmp_path / "RESULTS.md"
    report.write_text("# Results\n\n## Summary\n\nthe seeds' tables\n")
    reproduce.merge_section(report, [reproduce.GROUND_TRUTH_HEADING, "", "first"])
    reproduce.merge_section(report, [reproduce.GROUND_TRUTH_HEADING, "", "second"])
    text = report.read_text()
    assert text == f"# Results\n\n## Summary\n\nthe seeds' tables\n\n{reproduce.GROUND_TRUTH_HEADING}\n\nsecond\n"
