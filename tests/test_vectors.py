"""``dataset=vectors``: float vectors from .npy / .pt / .safetensors files and shard directories,
in memory and streamed; the trainer, evaluation and export on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aeexp.config import ConfigError
from aeexp.data.datasets import DataNotFoundError
from aeexp.data.images import ImageSplits, fraction_split, index_batches, to_float
from aeexp.registry import DATASETS
from aeexp.training.run import run_training
from conftest import compose

N, D = 200, 12


def vectors(n: int = N, d: int = D, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


def save(tensor: torch.Tensor, path: Path, labels: torch.Tensor | None = None) -> Path:
    """``tensor`` in the format of ``path``'s suffix (labels inside .pt / .safetensors)."""
    if path.suffix == ".npy":
        np.save(path, tensor.numpy())
    elif path.suffix == ".pt":
        torch.save(tensor if labels is None else {"vectors": tensor, "labels": labels}, path)
    else:
        from safetensors.torch import save_file

        save_file({"vectors": tensor.contiguous(), **({} if labels is None else {"labels": labels})}, str(path))
    return path


def save_shards(tensor: torch.Tensor, folder: Path, suffix: str, sizes: list[int], labels=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    begin = 0
    for i, size in enumerate(sizes):
        part_labels = None if labels is None else labels[begin : begin + size]
        save(tensor[begin : begin + size], folder / f"part-{i:03d}{suffix}", part_labels)
        begin += size
    return folder


def load(path: Path, **keys) -> ImageSplits:
    return DATASETS.build({"name": "vectors", "path": str(path), **keys})


def split_rows(n: int = N, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(sorted(v)) for k, v in fraction_split(n, val, test, seed).items()}


def as_tensor(samples) -> torch.Tensor:
    return samples if isinstance(samples, torch.Tensor) else samples.materialise()


# ------------------------------------------------------------------------- formats
FORMATS = [(".npy", torch.float16), (".npy", torch.float32), (".npy", torch.float64), (".pt", torch.bfloat16),
           (".pt", torch.float16), (".safetensors", torch.bfloat16), (".safetensors", torch.float32)]


@pytest.mark.parametrize("layout", ["file", "shards"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("suffix,dtype", FORMATS, ids=[f"{s[1:]}-{str(d)[6:]}" for s, d in FORMATS])
def test_each_format_and_layout_round_trips_exactly_in_its_dtype(tmp_path, suffix, dtype, stream, layout):
    data = vectors(dtype=dtype)
    path = save(data, tmp_path / f"x{suffix}") if layout == "file" else \
        save_shards(data, tmp_path / "shards", suffix, [70, 0, 50, 80] if suffix == ".npy" else [70, 50, 80])
    splits = load(path, stream=stream)
    assert splits.kind == "vectors" and not splits.is_image and splits.shape == (D,)
    rows = split_rows()
    for split in ("train", "val", "test"):
        got = as_tensor(getattr(splits, f"{split}_images"))
        assert got.dtype == dtype
        assert torch.equal(got, data[rows[split]]), split
    assert torch.equal(splits.train_labels, torch.zeros(len(rows["train"]), dtype=torch.int64))


def test_to_float_casts_vectors_without_scaling_and_never_aliases():
    stored = vectors(4, 3)
    batch = to_float(stored)
    assert batch.dtype == torch.float32 and torch.equal(batch, stored) and batch.data_ptr() != stored.data_ptr()
    assert torch.equal(to_float(stored.half()), stored.half().float())
    images = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.equal(to_float(images), torch.ones(1, 1, 2, 2))  # images: scaled as before


def test_labels_from_a_file_from_the_shards_or_none(tmp_path):
    data, labels = vectors(), torch.arange(N) % 7
    np.save(tmp_path / "labels.npy", labels.numpy().astype(np.int32))
    rows = split_rows()
    from_file = load(save(data, tmp_path / "x.npy"), labels_path=str(tmp_path / "labels.npy"))
    assert torch.equal(from_file.val_labels, labels[rows["val"]]) and from_file.val_labels.dtype == torch.int64
    for suffix in (".pt", ".safetensors"):
        inside = load(save_shards(data, tmp_path / suffix[1:], suffix, [100, 100], labels=labels))
        assert torch.equal(inside.train_labels, labels[rows["train"]]), suffix
        assert torch.equal(inside.test_labels, labels[rows["test"]]), suffix


def test_splits_are_disjoint_cover_every_row_and_follow_split_seed(tmp_path):
    path = save(vectors(), tmp_path / "x.npy")
    a, b, c = load(path), load(path), load(path, split_seed=1)
    rows = split_rows()
    assert sorted(torch.cat(list(rows.values())).tolist()) == list(range(N))
    assert len(rows["val"]) == len(rows["test"]) == 20
    assert torch.equal(a.val_images, b.val_images) and not torch.equal(a.val_images, c.val_images)


def test_fc_takes_its_input_width_from_the_vectors(tmp_path):
    from aeexp.models.factory import build_model

    cfg = compose("dataset=vectors", f"dataset.path={save(vectors(), tmp_path / 'x.npy')}", "model.latent_dim=5",
                  "model.output_activation=none")
    from aeexp.config import validate

    model = build_model(validate(cfg), (D,))
    x = vectors(3)
    x_hat, z = model(x)
    assert x_hat.shape == (3, D) and z.shape == (3, 5)


# ------------------------------------------------------------------------ refusals
def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_bad_files_are_one_line_naming_dataset_path(tmp_path):
    cases = {
        "missing": (tmp_path / "nowhere.npy", "no such file"),
        "ndim": (save(torch.zeros(4, 2, 3), tmp_path / "three_d.pt"), "shape (4, 2, 3)"),
        "dtype": (save(torch.zeros(4, 3, dtype=torch.int64), tmp_path / "ints.npy"), "int64"),
        "suffix": (tmp_path / "x.csv", "allowed"),
    }
    (tmp_path / "x.csv").write_text("1,2\n")
    widths = tmp_path / "widths"
    save_shards(vectors(6, 4), widths, ".npy", [3])
    save(vectors(3, 5), widths / "part-009.npy")
    cases["widths"] = (widths, "width 5")
    nan = vectors(10, 3)
    nan[7, 1] = float("nan")
    cases["nan"] = (save(nan, tmp_path / "nan.npy"), "row 7 holds NaN")
    for name, (path, expected) in cases.items():
        with pytest.raises((ConfigError, DataNotFoundError)) as err:
            load(path)
        message = one_line(err)
        assert "dataset.path" in message and expected in message, (name, message)


def test_tensor_names_labels_and_shard_mismatches(tmp_path, monkeypatch):
    data = vectors()
    torch.save({"acts": data, "step": 3, "note": "layer 6"}, tmp_path / "named.pt")  # other entries are ignored
    assert torch.equal(load(tmp_path / "named.pt").val_images, data[split_rows()["val"]])
    torch.save({"a": data, "b": data}, tmp_path / "two.pt")
    assert torch.equal(load(tmp_path / "two.pt", key="b").test_images, data[split_rows()["test"]])
    np.save(tmp_path / "short.npy", np.zeros(N - 1, dtype=np.int64))
    mixed = tmp_path / "mixed"
    save_shards(data, mixed, ".pt", [100])
    save(data[100:].double(), mixed / "part-001.pt")
    unlabelled = tmp_path / "unlabelled"
    save_shards(data, unlabelled, ".pt", [100], labels=torch.zeros(100, dtype=torch.int64))
    save(data[100:], unlabelled / "part-001.pt")
    cases = [
        (dict(path=tmp_path / "two.pt"), "dataset.key=<name>"),
        (dict(path=tmp_path / "two.pt", key="c"), "dataset.key='c'"),
        (dict(path=save(data, tmp_path / "x.npy"), labels_path=str(tmp_path / "short.npy")), "199 labels for 200"),
        (dict(path=tmp_path / "x.npy", labels_path=str(tmp_path / "none.npy")), "dataset.labels_path"),
        (dict(path=mixed), "float64"),
        (dict(path=unlabelled), "has no 'labels'"),
    ]
    for keys, expected in cases:
        with pytest.raises((ConfigError, DataNotFoundError)) as err:
            load(**keys)
        assert expected in one_line(err), (keys, str(err.value))
    path = save(data, tmp_path / "z.safetensors")
    monkeypatch.setitem(__import__("sys").modules, "safetensors", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install safetensors"):
        load(path)


def test_nan_is_found_while_streaming_past_the_checked_head(tmp_path, monkeypatch):
    import aeexp.data.vectors as module

    monkeypatch.setattr(module, "CHECK_ROWS", 4)  # only the first rows are checked before streaming
    data = vectors()
    data[150, 0] = float("inf")
    splits = load(save(data, tmp_path / "x.npy"), stream=True)
    with pytest.raises(DataNotFoundError, match="row 150 holds NaN or inf"):
        for _ in index_batches(splits.train_images, 16, 5):
            pass


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_nan_and_inf_check_finds_exactly_the_rows_that_hold_them(dtype):
    from aeexp.data.vector_files import non_finite_rows

    info = torch.finfo(dtype)
    block = torch.tensor([[0.0, 1.0], [info.max, -info.max], [info.tiny / 4, -info.tiny], [float("nan"), 0.0],
                          [0.0, float("inf")], [-float("inf"), 1.0], [-0.0, info.min]], dtype=dtype)
    assert non_finite_rows(block).tolist() == [False, False, False, True, True, True, False]
    assert non_finite_rows(block.t().contiguous().t()).tolist() == [False, False, False, True, True, True, False]


def test_conv_and_pixel_noise_on_vectors_are_refused_before_the_data_is_read(tmp_path):
    from aeexp.config import validate

    missing = str(tmp_path / "not-there.npy")  # never opened: the config alone is refused
    for overrides, key in [(["model=conv"], "model"), (["noise=salt_pepper"], "noise"),
                           (["noise=gaussian"], "noise.clamp")]:
        with pytest.raises(ConfigError) as err:
            validate(compose("dataset=vectors", f"dataset.path={missing}", *overrides))
        assert err.value.key == key and "vectors" in one_line(err)
    validate(compose("dataset=vectors", f"dataset.path={missing}", "noise=gaussian", "noise.clamp=false"))


def test_a_conv_target_model_gets_vector_shapes_refused_at_build(tmp_path):
    from aeexp.models.conv import build_conv
    from aeexp.models.conv import ConvModelConfig
    from dataclasses import asdict

    node = {k: v for k, v in asdict(ConvModelConfig()).items() if k != "name"}
    with pytest.raises(ConfigError, match="needs images"):
        build_conv(input_shape=(D,), bottleneck=torch.nn.Identity(), **node)


# ----------------------------------------------------------------------- streaming
def streamed(tmp_path: Path, buffer: int = 64, sizes=(50, 50, 50, 50)):
    data = vectors()
    folder = save_shards(data, tmp_path / "shards", ".npy", list(sizes))
    return data, load(folder, stream=True, shuffle_buffer=buffer).train_images


def epoch(samples, seed, batch_size=16, start=0) -> torch.Tensor:
    return torch.cat(list(index_batches(samples, batch_size, seed, start)))


def test_a_streamed_epoch_is_every_training_row_once_seeded_and_mixed_across_shards(tmp_path):
    data, train = streamed(tmp_path)
    rows = split_rows()["train"]
    a, b, c = epoch(train, 1), epoch(train, 1), epoch(train, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort(0).values, data[rows].float().sort(0).values)
    # which shard each of the first 32 samples came from: several, not one after the other
    position = {tuple(v.tolist()): int(r) for v, r in zip(data[rows], rows)}
    shards = {position[tuple(v.tolist())] // 50 for v in a[:32]}
    assert len(shards) >= 2
    sizes = [len(x) for x in index_batches(train, 24, 1)]
    assert sizes == [24] * (len(rows) // 24) + [len(rows) % 24] and len(rows) % 24


@pytest.mark.parametrize("start", [0, 1, 3, 7, 9])
@pytest.mark.parametrize("buffer", [1, 20, 64, 1000])
def test_a_streamed_epoch_resumed_at_batch_start_is_the_rest_of_the_same_epoch(tmp_path, start, buffer):
    _, train = streamed(tmp_path, buffer)
    whole = epoch(train, 5)
    assert torch.equal(epoch(train, 5, start=start), whole[start * 16 :])


def test_a_set_larger_than_max_memory_mb_is_streamed_without_asking(tmp_path, caplog):
    from aeexp.data.vector_stream import StreamedVectors

    folder = save_shards(vectors(), tmp_path / "shards", ".npy", [100, 100])
    with caplog.at_level("INFO", logger="aeexp.data.vectors"):
        big = load(folder, max_memory_mb=0)
    assert isinstance(big.train_images, StreamedVectors) and "> dataset.max_memory_mb=0" in caplog.text
    assert isinstance(load(folder).train_images, torch.Tensor)
    assert isinstance(load(folder, stream=True).train_images, StreamedVectors)


def test_debug_limits_take_the_first_streamed_rows(tmp_path):
    data = vectors()
    splits = load(save_shards(data, tmp_path / "shards", ".npy", [100, 100]), stream=True).limited(10, 5)
    rows = split_rows()
    assert len(splits.train_images) == 10 and len(splits.train_labels) == 10
    assert torch.equal(splits.train_images.materialise(), data[rows["train"][:10]])
    assert torch.equal(epoch(splits.val_images, None, 2), data[rows["val"][:5]].float())


def test_a_consumer_that_stops_early_leaves_no_thread_behind(tmp_path):
    import threading

    _, train = streamed(tmp_path)
    batches = index_batches(train, 4, 3)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "aeexp-vector-prefetch" and t.is_alive()]


# ------------------------------------------------------------------------ training
def vector_run(path: Path, *overrides: str):
    return compose("dataset=vectors", f"dataset.path={path}", "model.output_activation=none", "model.latent_dim=16",
                   "trainer.batch_size=32", "trainer.progress=false", "device=cpu", "trainer.epochs=2", *overrides)


def test_training_on_vectors_reports_vector_figures_and_draws_only_codes(tmp_path):
    path = save(vectors(dtype=torch.float16), tmp_path / "x.npy")
    metrics = run_training(vector_run(path, "sparsity=topk", "sparsity.k=4"), tmp_path / "run")
    assert metrics["status"] == "completed"
    assert 0 < metrics["val_fvu"] < 1.2 and metrics["val_explained_variance"] == pytest.approx(1 - metrics["val_fvu"])
    assert metrics["val_l0"] <= 4 and 0 <= metrics["dead_fraction"] <= 1
    assert {p.name for p in (tmp_path / "run" / "images").iterdir()} == {"codes.png"}  # image-only panels skipped
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert tuple(state["input_shape"]) == (D,)


def test_an_interrupted_streamed_epoch_resumes_on_the_same_samples_and_weights(tmp_path, monkeypatch):
    from conftest import sigterm_at_step

    from aeexp.training.interrupts import TrainingInterrupted

    folder = save_shards(vectors(), tmp_path / "shards", ".npy", [60, 60, 80])
    run = ("dataset.stream=true", "dataset.shuffle_buffer=40", "trainer.epochs=3")
    run_training(vector_run(folder, *run), tmp_path / "straight")
    # step 7: inside epoch 2 (5 batches of 32 per epoch)
    with sigterm_at_step(monkeypatch, 7), pytest.raises(TrainingInterrupted, match="epoch 2 after step 2"):
        run_training(vector_run(folder, *run), tmp_path / "stopped")
    metrics = run_training(vector_run(folder, *run, "trainer.resume=true"), tmp_path / "stopped")
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["val_mse"] == straight["val_mse"] and metrics["train_loss"] == straight["train_loss"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------ evaluation and export
FAST_EVAL = ("eval.probe_max_iter=30", "eval.labels_per_class=[3]", "eval.head_steps=10", "eval.progress=false",
             "eval.knn_k=3")


def fast_settings():
    from omegaconf import OmegaConf

    from aeexp.evaluation import check_settings

    return check_settings(OmegaConf.from_dotlist([o.removeprefix("eval.") for o in FAST_EVAL]))


@pytest.mark.slow  # two command lines; the inner loop trains and evaluates vectors in-process (tests above and below)
def test_train_py_then_evaluate_py_on_a_npy_file(tmp_path):
    """The command lines of the README: train.py on a .npy file with top-k, then evaluate.py."""
    from cli_runner import run_cli

    path = save(vectors(300, 16, torch.float16), tmp_path / "acts.npy")
    run = tmp_path / "run"
    code, output = run_cli("train.py", ["dataset=vectors", f"dataset.path={path}", "sparsity=topk", "sparsity.k=8",
                                        "trainer.epochs=2", "trainer.batch_size=64", "device=cpu",
                                        f"hydra.run.dir={run}"], tmp_path)
    assert code == 0, output
    assert "240 train / 30 val vectors of shape (16,)" in output and "image-only pictures" in output
    code, output = run_cli("evaluate.py", [f"run_dir={run}", "device=cpu", *FAST_EVAL], tmp_path)
    assert code == 0 and "Traceback" not in output, output
    assert "explained variance" in output and "probes, kNN and semi-supervised heads are skipped" in output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["kind"] == "vectors" and 0 < metrics["test_fvu"] and "test_psnr" not in metrics
    assert metrics["test_explained_variance"] == pytest.approx(1 - metrics["test_fvu"])
    assert metrics["pca_components"] == 16 and metrics["mse_vs_pca"] is None  # a 64-wide code: PCA is exact
    assert metrics["denoising"] == [] and "probe_accuracy" not in metrics
    assert sorted(metrics["figures"]) == ["codes.png", "latent_scatter.png"]


def test_a_streamed_labelled_run_evaluates_exports_and_loads(tmp_path):
    from aeexp import load_run
    from aeexp.evaluation import evaluate_run
    from aeexp.export import export_codes

    data, labels = vectors(300), torch.arange(300) % 3
    data[:, 0] += labels * 10  # classes a probe can tell apart
    folder = save_shards(data, tmp_path / "shards", ".safetensors", [100, 100, 100], labels=labels)
    run = tmp_path / "run"
    run_training(vector_run(folder, "dataset.stream=true", "trainer.image_every=0"), run)
    metrics = evaluate_run(run, fast_settings(), "cpu")
    assert metrics["test_images"] == 30 and 0 <= metrics["probe_accuracy"] <= 1
    assert metrics["pixel_probe_accuracy"] > 0.9  # the inputs themselves: the class is in dimension 0
    assert "ssl3_frozen" in metrics

    loaded = load_run(run)
    assert loaded.input_shape == (D,)
    x = data[:4].float()
    assert loaded.model(x)[0].shape == (4, D)
    files = export_codes([f"run_dir={run}", "split=test", f"out={tmp_path / 'codes'}"])
    codes = np.load(files["codes"])
    rows = split_rows(300)["test"]
    assert codes.shape == (30, 16)
    assert np.allclose(codes, loaded.model.encode(data[rows].float()).numpy(), atol=1e-5)
    assert np.array_equal(np.load(files["labels"]), labels[rows].numpy())
