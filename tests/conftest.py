"""Shared helpers: composing the real config tree, small training configs, IDX files, a
user's own model class, and checkpoints crafted the way an attacker would.

Tests import the plain functions directly (``from conftest import compose``); pytest puts
this folder on ``sys.path`` because ``tests/`` is not a package. Helpers shared by several
test modules live here, never in a test module another one imports.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import os
import signal
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import aeexp  # noqa: F401  (first: aeexp sets OpenMP's wait policy before torch loads it; aeexp.threads)
import hydra
import pytest
import torch
import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.defaults_list import Overrides
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from aeexp.models import Autoencoder

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
# evaluate.py keeps data-only baselines in paths.cache_dir (the checkout's .cache by default):
# tests keep theirs in a folder of their own, so a test never reads what an earlier one left.
os.environ.setdefault("AEEXP_CACHE", tempfile.mkdtemp(prefix="aeexp-test-cache-"))

# A run small enough to take a fraction of a second on two CPU cores.
SMALL_RUN = (
    "dataset=synthetic",
    "dataset.num_train=512",
    "dataset.num_val=256",
    "trainer.batch_size=64",
    "trainer.progress=false",
    "device=cpu",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fashion_mnist: trains on the real Fashion-MNIST files (Debian's dataset-fashion-mnist); "
        "skipped when they are not installed",
    )


def inner_loop(cases: list[tuple], count: int) -> list:
    """A long ``parametrize`` list of argument tuples (1-tuples for one argument) whose first
    ``count`` cases stand for it in the inner loop (``pytest -m "not slow"``); the others are
    marked ``slow``, so ``make test`` still runs them all."""
    return [pytest.param(*case, marks=() if i < count else pytest.mark.slow) for i, case in enumerate(cases)]


def compose(*overrides: str) -> DictConfig:
    """The config ``python train.py <overrides>`` would see (without the ``hydra`` node).

    Hydra composes in two steps: the config groups the overrides choose make a defaults
    list, which is merged into one config; then the other overrides (``key=value``, ``+key``,
    ``~key``) are applied to it, in order. A whole composition costs a tenth of a second or two
    and the suite composes a few hundred times, mostly the same few group choices with
    different values, so the first step's result is kept per list of group overrides and the
    second step runs on a copy of it through Hydra's own function (an error from either step
    is Hydra's). Overrides of ``hydra.*``, sweeps, or anything else Hydra might treat
    differently compose from scratch, as does every call with ``AEEXP_TEST_COMPOSE_CACHE=0``;
    test_config.py checks both ways give the same config and errors.
    """
    if os.environ.get("AEEXP_TEST_COMPOSE_CACHE", "1") != "0":
        split = _split_overrides(overrides)
        if split is not None:
            groups, values = split
            base = _COMPOSED_GROUPS.get(groups)
            if base is None:
                try:
                    base = hydra_compose(*groups)
                except HydraException:
                    return hydra_compose(*overrides)  # the error Hydra gives for the whole command line
                _COMPOSED_GROUPS[groups] = base
            cfg = copy.deepcopy(base)
            try:
                ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            except OmegaConfBaseException as err:  # as ConfigLoaderImpl.load_configuration wraps them
                raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from err
            return cfg
    return hydra_compose(*overrides)


def hydra_compose(*overrides: str) -> DictConfig:
    """:func:`compose` without its cache: one whole composition by Hydra's compose API."""
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra.compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


_COMPOSED_GROUPS: dict[tuple[str, ...], DictConfig] = {}  # group overrides -> Hydra's composition of them
_GROUPS_REPO = []  # [the config repository Hydra composes from], once built: it says which keys are groups


def _config_repository():
    """The repository Hydra reads conf/ through (with conf/config.yaml's search path)."""
    if not _GROUPS_REPO:
        GlobalHydra.instance().clear()
        try:
            with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                loader = GlobalHydra.instance().config_loader()
                _GROUPS_REPO.append(loader._parse_overrides_and_create_caching_repo("config", [])[1])
        finally:
            GlobalHydra.instance().clear()
    return _GROUPS_REPO[0]


def _split_overrides(overrides: tuple[str, ...]) -> tuple[tuple[str, ...], list] | None:
    """(the overrides that choose config groups, as typed; the parsed others) as Hydra sorts
    them (``hydra._internal.defaults_list.Overrides``), or None where :func:`compose` should
    not take the shortcut."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        if any(o.key_or_group.split(".")[0].split("/")[0] == "hydra" or o.is_sweep_override() for o in parsed):
            return None  # hydra.searchpath among them could change which groups there are
        values = Overrides(_config_repository(), parsed).config_overrides
    except (HydraException, ValueError):  # unparsable, or a group given something Hydra refuses
        return None  # Hydra's own composition will say what is wrong
    groups = tuple(o.input_line for o in parsed if not any(o is v for v in values))
    return groups, values


def event_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} over every TensorBoard event file directly in ``run_dir`` (a
    resumed run adds one; a later file's value for a step replaces an earlier one's)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return found


def small_run(*overrides: str) -> DictConfig:
    """A composed config for a tiny CPU run on synthetic data; ``overrides`` come last."""
    return compose(*SMALL_RUN, *overrides)


# ---------------------------------------------------------------------------- IDX files
IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic 0x0000080<ndim>, big-endian int32 dims, data."""
    assert array.dtype == torch.uint8
    header = struct.pack(">I", 0x00000800 | array.dim())
    header += struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.contiguous().numpy().tobytes()


def tiny_idx_set(num_train: int = 20, num_test: int = 10, seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
    """Random 28x28 uint8 images and labels; image ``i`` of a split has ``i`` in its corner
    pixel, so every image is distinct and traceable after a shuffle."""
    g = torch.Generator().manual_seed(seed)
    data = {}
    for split, n in (("train", num_train), ("test", num_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        images[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
        data[(split, "images")] = images
        data[(split, "labels")] = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    return data


def write_idx_set(folder: Path, data: dict[tuple[str, str], torch.Tensor], gz: bool = False) -> Path:
    """Write the four IDX files (plain, or gzipped with a .gz suffix) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, filename in IDX_NAMES.items():
        payload = idx_bytes(data[key])
        if gz:
            with gzip.open(folder / f"{filename}.gz", "wb") as handle:
                handle.write(payload)
        else:
            (folder / filename).write_bytes(payload)
    return folder


# ------------------------------------------------------------------ a user's own model
class TinyUserModel(Autoencoder):
    """A user's own model, outside aeexp: built by ``_target_`` with the same context
    (input_shape, bottleneck) the registered builders get."""

    def __init__(self, input_shape, bottleneck, latent_dim: int = 3):
        size = int(torch.tensor(input_shape).prod())
        super().__init__(
            nn.Sequential(nn.Flatten(), nn.Linear(size, latent_dim)),
            bottleneck,
            nn.Sequential(nn.Linear(latent_dim, size), nn.Unflatten(1, tuple(input_shape))),
        )
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim


# --------------------------------------------- crafted checkpoints (test_trust, test_bad_input)
BEST = Path("checkpoints") / "best.pt"


def stored_config(run_dir: Path) -> dict:
    state = torch.load(run_dir / BEST, weights_only=True)
    return OmegaConf.to_container(OmegaConf.create(state["config"]))


def write_config_text(run_dir: Path, text: str) -> None:
    state = torch.load(run_dir / BEST, weights_only=True)
    state["config"] = text
    torch.save(state, run_dir / BEST)


def write_config(run_dir: Path, config: dict) -> None:
    write_config_text(run_dir, yaml.safe_dump(config, sort_keys=False))


def copy_payload(source, dest) -> dict:
    return {"_target_": "shutil.copyfile", "_args_": [str(source), str(dest)]}


YAML_TAGS = {
    "copyfile": lambda site: f"!!python/object/apply:shutil.copyfile ['{os.devnull}', '{site['victim']}']",
    "os_system": lambda site: f"!!python/object/apply:os.system ['touch {site['created']}']",
    "name": lambda site: "!!python/name:shutil.copyfile",
}


class CopyOnLoad:
    """Unpickling this calls shutil.copyfile: a checkpoint that would run code when loaded."""

    def __init__(self, source, dest):
        self.source, self.dest = str(source), str(dest)

    def __reduce__(self):
        return shutil.copyfile, (self.source, self.dest)


class SystemOnLoad:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


PICKLES = {
    "copyfile": lambda site: CopyOnLoad(os.devnull, site["victim"]),
    "os_system": lambda site: SystemOnLoad(f"touch {site['created']}"),
}


def sweep_finals(sweep_dir: Path) -> dict[str, dict]:
    """Each job's final figures in a sweep folder, by job folder name."""
    import json

    return {p.parent.name: {k: json.loads(p.read_text()).get(k) for k in ("status", "epoch", "val_mse", "train_loss")}
            for p in Path(sweep_dir).glob("*/metrics.json")}


def sigterm_sweep_after_first_epoch(command: list[str], sweep_dir: Path, poll: float = 0.1) -> dict[str, dict]:
    """Start the sweep ``command`` (writing to ``sweep_dir``), send its process SIGTERM once a
    job has finished an epoch, check it ended as a signalled sweep should (128 + SIGTERM, no
    traceback, the sweep says so) and that a job saved its place; return the jobs' finals."""
    import subprocess
    import time

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(Path(sweep_dir).glob("*/metrics.json")) and time.time() < deadline:
        time.sleep(poll)  # a job has finished its first epoch
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output and "sweep interrupted by SIGTERM" in output
    partial = sweep_finals(sweep_dir)
    assert "interrupted" in {m["status"] for m in partial.values()}, partial
    return partial


@contextlib.contextmanager
def sigterm_at_step(monkeypatch, step: int):
    """Within the block, the trainer is told of a SIGTERM just before its ``step``-th training
    step (counted from 1 over the block), as if one had arrived then; the steps themselves run
    unchanged. Afterwards the trainer is as it was."""
    from aeexp.training.trainer import Trainer

    real_step = Trainer.train_step
    calls = {"n": 0}

    def step_then_signal(self, clean):
        calls["n"] += 1
        if calls["n"] == step:
            self.interrupts.signum = signal.SIGTERM
        return real_step(self, clean)

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    try:
        yield
    finally:
        monkeypatch.setattr(Trainer, "train_step", real_step)
