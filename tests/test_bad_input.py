"""The bad-input battery: every user error is one line, before work where possible.

Each case runs ``train.py`` or ``evaluate.py`` as a user would (:mod:`cli_runner`: a forked
child of this process, or a subprocess where there is no fork) in its own copy of
a prepared folder (a finished tiny run on synthetic data, one on tiny IDX files, IDX files,
image folders, a module of user classes and a config folder naming them), after the case's
own setup has broken something in that copy. Every case asserts:

- the exit status (2 for a user error);
- exactly one non-empty line of output, holding the expected words (the key, the file);
- no ``Traceback`` anywhere in the output;
- every file that existed before the command is byte-identical after it, and no temporary
  file was left behind.

Cases are data: ``(id, script, args, expected status, expected words, setup)``. The selected
cases all run first, as many at a time as there are CPUs (a fixture), and each test then checks
its own result, so the battery takes half a minute on two cores.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import yaml
from PIL import Image

from cli_runner import run_cli, run_many
from conftest import (BEST, PICKLES, YAML_TAGS, copy_payload, idx_bytes, stored_config, tiny_idx_set, write_config,
                      write_config_text, write_idx_set)

RAW = Path("data") / "FashionMNIST" / "raw"
TRAIN_IMAGES = RAW / "train-images-idx3-ubyte"
TRAIN_LABELS = RAW / "train-labels-idx1-ubyte"
VICTIM_TEXT = b"precious data that no bad input may touch\n"

# A tiny synthetic run: what every train.py case would start if its refusal did not come first.
SYNTH = ("dataset=synthetic", "dataset.num_train=64", "dataset.num_val=32", "dataset.num_test=32", "device=cpu",
         "trainer.progress=false", "trainer.epochs=1", "trainer.batch_size=32", "trainer.image_every=0")
# The tiny IDX set in data/ (20 training images, 10 test images).
IDX = ("dataset=fashion_mnist", "dataset.root=data", "dataset.download=false", "dataset.val_size=5", "device=cpu",
       "trainer.progress=false", "trainer.epochs=1", "trainer.batch_size=8", "trainer.image_every=0")
IMAGES = ("dataset=image_folder", "dataset.root=images", "dataset.size=[8,8]", "dataset.num_workers=0",
          "model=mlp", "device=cpu", "trainer.progress=false", "trainer.epochs=1", "trainer.batch_size=4",
          "trainer.image_every=0")
EVAL = ("device=cpu", "eval.progress=false", "eval.figures=false", "eval.probe_max_iter=5", "eval.head_steps=2",
        "eval.labels_per_class=[2]", "eval.noise_levels=[0.1]")
USER = ("--config-dir", "myconf", "dataset=synthetic", "dataset.num_train=64", "dataset.num_val=32",
        "dataset.num_test=32", "device=cpu", "trainer.progress=false", "trainer.epochs=1", "trainer.image_every=0")
PYTHONPATH = {"PYTHONPATH": "usercode"}

USER_MODULE = '''
import torch
from torch import nn
from aeexp.models import Autoencoder
from aeexp.sparsity import Sparsity


class NotAnAutoencoder(nn.Module):
    def __init__(self, input_shape, bottleneck, latent_dim: int = 4):
        super().__init__()
        self.net = nn.Linear(1, 1)


def linear_model(input_shape, bottleneck, latent_dim: int = 4):
    return nn.Linear(4, 4)


class NoShapeAutoencoder(Autoencoder):
    def __init__(self, latent_dim: int = 4):
        super().__init__(nn.Identity(), nn.Identity(), nn.Identity())


class TinyAutoencoder(Autoencoder):
    def __init__(self, input_shape, bottleneck, latent_dim: int = 4):
        size = int(torch.tensor(input_shape).prod())
        super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(size, latent_dim)), bottleneck,
                         nn.Sequential(nn.Linear(latent_dim, size), nn.Unflatten(1, tuple(input_shape))))


class IgnoresBottleneck(Autoencoder):
    def __init__(self, input_shape, bottleneck, latent_dim: int = 4):
        size = int(torch.tensor(input_shape).prod())
        super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(size, latent_dim)), nn.Identity(),
                         nn.Sequential(nn.Linear(latent_dim, size), nn.Unflatten(1, tuple(input_shape))))


class NoPenalty(nn.Module):
    def forward(self, z):
        return z


class GoodSparsity(Sparsity):
    def __init__(self, strength: float = 1.0):
        super().__init__()
'''

USER_CONFIGS = {
    "model/missing_module.yaml": "_target_: nosuch_module_xyz.Model\nlatent_dim: 4\n",
    "model/missing_class.yaml": "_target_: mymodels.NoSuchModel\nlatent_dim: 4\n",
    "model/not_autoencoder.yaml": "_target_: mymodels.NotAnAutoencoder\nlatent_dim: 4\n",
    "model/function_linear.yaml": "_target_: mymodels.linear_model\nlatent_dim: 4\n",
    "model/no_shape.yaml": "_target_: mymodels.NoShapeAutoencoder\nlatent_dim: 4\n",
    "model/builtin_dict.yaml": "_target_: builtins.dict\n",
    "model/tiny.yaml": "_target_: mymodels.TinyAutoencoder\nlatent_dim: 4\n",
    "model/ignores_bottleneck.yaml": "_target_: mymodels.IgnoresBottleneck\nlatent_dim: 4\n",
    "scheduler/step.yaml": "_target_: torch.optim.lr_scheduler.StepLR\nstep_size: 3\n",
    "optimizer/sgd_typo.yaml": "_target_: torch.optim.SGD\nlrr: 0.1\n",
    "sparsity/missing_module.yaml": "_target_: nosuch_module_xyz.Sparse\n",
    "sparsity/no_penalty.yaml": "_target_: mymodels.NoPenalty\n",
    "sparsity/builtin_dict.yaml": "_target_: builtins.dict\n",
    "sparsity/wrong_args.yaml": "_target_: mymodels.GoodSparsity\nstrenght: 2.0\n",
    "optimizer/missing_module.yaml": "_target_: nosuch_module_xyz.Optimizer\nlr: 0.1\n",
}


# ------------------------------------------------------------------------ the site
def tiny_pngs(folder: Path, per_class: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 255, (10, 10, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / label / f"{i}.png")


@pytest.fixture(scope="module")
def template(request, tmp_path_factory) -> Path:
    """The folder each case gets a copy of (the finished runs only where a selected case reads them)."""
    site = tmp_path_factory.mktemp("bad_input_site")
    write_idx_set(site / RAW, tiny_idx_set())
    wanted = {arg for case in selected_cases(request.session) for arg in case.args}
    for name, args in (("run", SYNTH), ("run_idx", IDX)):  # small codes keep the checkpoints small
        if f"run_dir={name}" not in wanted:
            continue
        code, output = run_cli("train.py", [*args, "model.latent_dim=8", f"hydra.run.dir={name}"], cwd=site,
                               timeout=120)
        assert code == 0 and (site / name / BEST).is_file(), output
    tiny_pngs(site / "images")
    (site / "empty").mkdir()
    (site / "victim.txt").write_bytes(VICTIM_TEXT)
    (site / "a_file.txt").write_text("not a folder\n")
    (site / "usercode").mkdir()
    (site / "usercode" / "mymodels.py").write_text(USER_MODULE)
    for name, text in USER_CONFIGS.items():
        (site / "myconf" / name).parent.mkdir(parents=True, exist_ok=True)
        (site / "myconf" / name).write_text(text)
    return site


def selected_cases(session: pytest.Session) -> list[Case]:
    """The cases of test_bad_input_is_one_line this session runs (none skipped)."""
    cases = [item.callspec.params["case"] for item in session.items
             if getattr(item, "originalname", "") == "test_bad_input_is_one_line" and hasattr(item, "callspec")]
    return [case for case in cases if not case.skip]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# ------------------------------------------------------------------- case helpers
Setup = Callable[[Path], None]


@dataclass
class Case:
    id: str
    script: str
    args: tuple[str, ...]
    expect: str | tuple[str, ...]  # words the one line must hold
    code: int = 2
    setup: Optional[Setup] = None
    env: dict[str, str] = field(default_factory=dict)
    skip: Optional[str] = None


def T(id: str, args, expect, setup: Optional[Setup] = None, base=SYNTH, **kw) -> Case:
    return Case(f"train:{id}", "train.py", (*base, *args), expect, setup=setup, **kw)


def E(id: str, args, expect, setup: Optional[Setup] = None, run: str = "run", **kw) -> Case:
    head = (f"run_dir={run}",) if run else ()
    return Case(f"evaluate:{id}", "evaluate.py", (*head, *EVAL, *args), expect, setup=setup, **kw)


def write(path: str, data: bytes) -> Setup:
    def setup(site: Path) -> None:
        target = site / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return setup


def chain(*setups: Setup) -> Setup:
    def setup(site: Path) -> None:
        for one in setups:
            one(site)
    return setup


def edit_idx(path: Path, change: Callable[[bytes], bytes]) -> Setup:
    def setup(site: Path) -> None:
        (site / path).write_bytes(change((site / path).read_bytes()))
    return setup


def gz_only(change: Optional[Callable[[Path], None]] = None) -> Setup:
    """data/ holds only .gz files (the loader decompresses them through temporary files)."""
    def setup(site: Path) -> None:
        shutil.rmtree(site / RAW)
        write_idx_set(site / RAW, tiny_idx_set(), gz=True)
        if change is not None:
            change(site / RAW)
    return setup


def images_with(name: str, data: bytes) -> Setup:
    return write(f"images/a/{name}", data)


def good_png_bytes(site: Path) -> bytes:
    return (site / "images" / "a" / "0.png").read_bytes()


def truncated_png(site: Path) -> None:
    data = good_png_bytes(site)
    (site / "images" / "b" / "cut.png").write_bytes(data[: len(data) // 2])


def all_images_bad(site: Path) -> None:
    for path in (site / "images").rglob("*.png"):
        path.write_bytes(b"garbage")


def classes_without_images(site: Path) -> None:
    (site / "noimg" / "a").mkdir(parents=True)
    (site / "noimg" / "a" / "notes.txt").write_text("no images here\n")


def stored(change: Callable[[dict, Path], None], run: str = "run") -> Setup:
    """Rewrite the config stored in ``<run>/checkpoints/best.pt``."""
    def setup(site: Path) -> None:
        cfg = stored_config(site / run)
        change(cfg, site)
        write_config(site / run, cfg)
    return setup


def trust_site(site: Path) -> dict[str, Path]:
    return {"root": site, "run": site / "run", "victim": site / "victim.txt", "created": site / "created.txt"}


def pickle_payload(kind: str) -> Setup:
    def setup(site: Path) -> None:
        state = torch.load(site / "run" / BEST, weights_only=True)
        state["extra"] = PICKLES[kind](trust_site(site))
        torch.save(state, site / "run" / BEST)
    return setup


def yaml_tag(kind: str) -> Setup:
    def setup(site: Path) -> None:
        cfg = stored_config(site / "run")
        del cfg["dataset"]
        text = yaml.safe_dump(cfg, sort_keys=False) + f"dataset: {YAML_TAGS[kind](trust_site(site))}\n"
        write_config_text(site / "run", text)
    return setup


def checkpoint_bytes(change: Callable[[bytes], bytes]) -> Setup:
    def setup(site: Path) -> None:
        best = site / "run" / BEST
        best.write_bytes(change(best.read_bytes()))
    return setup


def set_path(path: str, value) -> Callable[[dict, Path], None]:
    def change(cfg: dict, site: Path) -> None:
        node = cfg
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return change


def idx_images(n: int, side: int) -> bytes:
    return idx_bytes(torch.zeros(n, side, side, dtype=torch.uint8))


def unreadable(path: str) -> Setup:
    def setup(site: Path) -> None:
        os.chmod(site / path, 0)
    return setup


ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CUDA = torch.cuda.is_available()

# ------------------------------------------------------------------------ the cases
CASES: list[Case] = [
    # -- config groups: unknown options (experiment/hparams_search were silently ignored)
    *[T(f"{g}=nosuch", [f"{g}=nosuch"], f"{g}: got 'nosuch', allowed: one of")
      for g in ("model", "sparsity", "noise", "dataset", "device", "optimizer", "scheduler", "trainer",
                "experiment", "hparams_search")],
    T("+experiment=nosuch", ["+experiment=nosuch"], "experiment: got 'nosuch'"),
    Case("train:sweep with a bad option", "train.py", ("-m", *SYNTH, "sparsity=topk,nosuch"), "sparsity: got 'nosuch'"),
    T("-m between overrides", ["-m", "sparsity=topk"], "got 'sparsity=topk' after an option such as -m"),
    T("experiment=nosuch lists conv32", ["experiment=nosuch"], "conv32"),
    # -- unknown keys, without + (Hydra's "not in struct") and with it (validate)
    T("model.foo", ["model.foo=1"], "model.foo: unknown key; valid keys here: name, latent_dim"),
    T("+model.foo", ["+model.foo=1"], "model.foo: unknown key; valid keys here"),
    T("sparsity.foo", ["sparsity.foo=1"], "sparsity.foo: unknown key; valid keys here: name"),
    T("topk sparsity.kk", ["sparsity=topk", "sparsity.kk=3"], "sparsity.kk: unknown key; valid keys here: name, k"),
    T("noise.sd", ["noise=gaussian", "noise.sd=0.1"], "noise.sd: unknown key; valid keys here: name, std"),
    T("dataset.foo", ["dataset.foo=1"], "dataset.foo: unknown key"),
    T("device.nme", ["device.nme=cpu"], "device.nme: unknown key; valid keys here: name, precision, compile"),
    T("optimizer.learning_rate", ["optimizer.learning_rate=0.1"], "optimizer.learning_rate: unknown key"),
    T("scheduler.patience on cosine", ["scheduler=cosine", "scheduler.patience=3"], "scheduler.patience: unknown key"),
    T("trainer.epoch", ["trainer.epoch=3"], "trainer.epoch: unknown key; valid keys here: epochs"),
    T("+trainer.foo", ["+trainer.foo=1"], "trainer.foo: unknown key"),
    T("model.tied on conv", ["model=conv", "model.tied=true"], "model.tied: unknown key"),
    Case("train:sweep: a key no option has", "train.py", ("-m", *SYNTH, "sparsity=topk,l1", "sparsity.kk=3"),
         "sparsity.kk: unknown key"),
    T("top-level foo", ["foo=bar"], "foo: unknown key; valid keys here"),
    T("+foo", ["+foo=bar"], "foo: unknown top-level key"),
    T("+model.latent_dim exists", ["+model.latent_dim=3"], "model.latent_dim: already set"),
    T("~model.nosuch", ["~model.nosuch"], "model.nosuch: unknown key"),
    T("seed.x", ["seed.x=3"], "seed is a single value"),
    T("trainer.max_parameters without ++", ["trainer.max_parameters=5"], "trainer.max_parameters=5"),
    T("trainer.stages[0].foo", ["trainer.stages=[{foo: 1}]"], "trainer.stages[0].foo: unknown key"),
    # -- the command line itself
    T("sweep without -m", ["model.latent_dim=1,2"], "model.latent_dim: got '1,2': several values sweep only with -m"),
    T("unparsable override", ["model.encoder=[{out"], "model.encoder: cannot parse"),
    T("unknown --option", ["--nosuch"], "--nosuch: unknown option"),
    T("--config-dir missing", ["--config-dir", "no_such_dir"], "--config-dir: got 'no_such_dir': no such folder"),
    T("--cfg nosuch", ["--cfg", "nosuch"], "--cfg: invalid choice: 'nosuch'"),
    T("--config-name nosuch", ["--config-name", "nosuch"], "--config-name: got 'nosuch', allowed: one of config, eval"),
    T("interpolation key missing", ["model.latent_dim=${nosuch}"], "model.latent_dim: cannot be resolved"),
    T("environment variable missing", ["trainer.epochs=${oc.env:AEEXP_NO_SUCH_VARIABLE}"],
      ("trainer.epochs: cannot be resolved", "AEEXP_NO_SUCH_VARIABLE")),
    T("a mapping for a list", ["model.encoder={out_features: 8}"], "model.encoder: got {'out_features': 8}, allowed: a list"),
    T("a number for a layer", ["model.encoder=[1,2]"], "model.encoder[0]: got 1, allowed: a mapping of keys"),
    # -- seed
    T("seed=-1", ["seed=-1"], ("seed: got -1, allowed: an integer in [0, 4294967295]", "torch.manual_seed")),
    T("seed=2**32", ["seed=4294967296"], "seed: got 4294967296"),
    T("seed=abc", ["seed=abc"], "seed: got 'abc'"),
    T("seed=true", ["seed=true"], "seed: got True"),
    T("dataset.seed=-1", ["dataset.seed=-1"], "dataset.seed: got -1"),
    T("dataset.split_seed=-1", ["dataset.split_seed=-1"], "dataset.split_seed: got -1", base=IDX),
    T("noise.val_seed=2**40", ["noise=gaussian", "noise.val_seed=1099511627776"], "noise.val_seed: got 1099511627776"),
    # -- trainer
    T("trainer.epochs=0", ["trainer.epochs=0"], "trainer.epochs: got 0, allowed: an integer >= 1"),
    T("trainer.epochs=0 before missing data", ["trainer.epochs=0", "dataset.download=false"], "trainer.epochs: got 0",
      base=()),
    T("trainer.epochs=abc", ["trainer.epochs=abc"], "trainer.epochs: Value 'abc'"),
    T("trainer.batch_size=0", ["trainer.batch_size=0"], "trainer.batch_size: got 0"),
    T("trainer.grad_clip=0", ["trainer.grad_clip=0"], "trainer.grad_clip: got 0"),
    T("trainer.resume_from", ["trainer.resume_from=middle"], "trainer.resume_from: got 'middle'"),
    T("trainer.monitor", ["trainer.monitor=loss"], "trainer.monitor: got 'loss'"),
    T("trainer.num_images=100", ["trainer.num_images=100"], "trainer.num_images: got 100"),
    T("trainer.progress=maybe", ["trainer.progress=maybe"], "trainer.progress"),
    T("stage epochs=0", ["trainer.stages=[{epochs: 0}]"], "trainer.stages[0].epochs: got 0"),
    T("stage depth too deep", ["trainer.stages=[{depth: 9}]"], "trainer.stages[0].depth: got 9"),
    T("stage train=[]", ["trainer.stages=[{train: []}]"], "trainer.stages[0].train: got []"),
    T("stage train all+new", ["trainer.stages=[{train: [all, new]}]"], "trainer.stages[0].train"),
    T("stage optimizer lr=0", ["trainer.stages=[{optimizer: {lr: 0}}]"], "trainer.stages[0].optimizer.lr: got 0"),
    T("++trainer.max_parameters=0", ["++trainer.max_parameters=0"], "trainer.max_parameters: got 0"),
    # -- model
    T("model.latent_dim=0", ["model.latent_dim=0"], "model.latent_dim: got 0"),
    T("model.latent_dim=abc", ["model.latent_dim=abc"], "model.latent_dim"),
    T("model.code_activation", ["model.code_activation=nosuch"], "model.code_activation: got 'nosuch'"),
    T("model.encoder out_features=0", ["model.encoder=[{out_features: 0}]"], "model.encoder[0].out_features: got 0"),
    T("model.encoder unknown layer key", ["model.encoder=[{out_featurs: 8}]"], "model.encoder[0].out_featurs"),
    T("model.tied=maybe", ["model.tied=maybe"], "model.tied"),
    T("model.tied without mirror", ["model.tied=true", "model.encoder=[{out_features: 32}]"], "model.tied: got True"),
    T("conv encoder=[]", ["model=conv", "model.encoder=[]"], "model.encoder: got []"),
    T("conv decoder=nosuch", ["model=conv", "model.decoder=nosuch"], "model.decoder: got 'nosuch'"),
    T("conv too deep for the image",
      ["model=conv", "dataset.height=4", "dataset.width=4", "model.encoder=[{channels: 4, kernel: 5}]"],
      "model.encoder[0]"),
    # -- too large for memory: refused before any data or weights
    T("latent_dim=100000", ["model.latent_dim=100000"],
      ("model: 156,900,784 parameters on 1x28x28 images", "++trainer.max_parameters=156900784")),
    T("latent_dim=100000 before the data", ["model.latent_dim=100000", "dataset.download=false"],
      "trainer.max_parameters=100,000,000", base=()),
    T("wide hidden layer", ["model=mlp", "model.encoder=[{out_features: 200000}]"], "++trainer.max_parameters="),
    T("limit lowered", ["++trainer.max_parameters=1000"], "above the limit trainer.max_parameters=1,000"),
    T("huge images", ["dataset.size=[3000,3000]"], "parameters on 3x3000x3000 images", base=IMAGES),
    # -- sparsity
    T("topk k=0", ["sparsity=topk", "sparsity.k=0"], "sparsity.k: got 0"),
    T("topk k above the code", ["sparsity=topk", "sparsity.k=100"], "sparsity.k: got 100, allowed: 1 to the code size, 64"),
    T("batch_topk eval_mode", ["sparsity=batch_topk", "sparsity.eval_mode=nosuch"], "sparsity.eval_mode: got 'nosuch'"),
    T("l1 weight<0", ["sparsity=l1", "sparsity.weight=-1"], "sparsity.weight: got -1"),
    T("kl rho=2", ["sparsity=kl", "sparsity.rho=2"], "sparsity.rho: got 2"),
    T("lifetime k above the batch", ["sparsity=lifetime", "sparsity.k=1000"], "sparsity.k: got 1000 samples per feature"),
    # -- noise
    T("gaussian std<0", ["noise=gaussian", "noise.std=-1"], "noise.std: got -1"),
    T("masking fraction=2", ["noise=masking", "noise.fraction=2"], "noise.fraction: got 2"),
    T("gaussian clamp=maybe", ["noise=gaussian", "noise.clamp=maybe"], "noise.clamp"),
    # -- optimizer, scheduler, device
    T("lr=0", ["optimizer.lr=0"], "optimizer.lr: got 0"),
    T("lr=abc", ["optimizer.lr=abc"], "optimizer.lr"),
    T("adam betas", ["optimizer.betas=[1.5,0.9]"], "optimizer.betas"),
    T("adamw weight_decay<0", ["optimizer=adamw", "optimizer.weight_decay=-1"], "optimizer.weight_decay: got -1"),
    T("sgd momentum=1", ["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum: got 1"),
    T("plateau factor=2", ["scheduler.factor=2"], "scheduler.factor: got 2"),
    T("cosine min_lr<0", ["scheduler=cosine", "scheduler.min_lr=-1"], "scheduler.min_lr: got -1"),
    T("device.precision", ["device.precision=fp8"], "device.precision: got 'fp8'"),
    T("device.name", ["device.name=tpu"], "device.name: got 'tpu'"),
    T("device.compile=maybe", ["device.compile=maybe"], "device.compile"),
    T("device=cuda without CUDA", ["device=cuda"], "device.name: got 'cuda', but it is not available",
      skip="CUDA is available here" if CUDA else None),
    # -- synthetic and torchvision dataset values
    T("synthetic num_train=0", ["dataset.num_train=0"], "dataset.num_train: got 0"),
    T("synthetic num_classes=1", ["dataset.num_classes=1"], "dataset.num_classes: got 1"),
    T("val_size=0", ["dataset.val_size=0"], "dataset.val_size: got 0", base=IDX),
    T("val_size above the split", ["dataset.val_size=50"], "dataset.val_size: got 50, allowed: 1 to 19", base=IDX),
    # -- IDX files: missing, garbage, truncated, wrongly sized (named; no temp file left)
    T("kmnist missing", ["dataset=kmnist", "dataset.root=empty", "dataset.download=false"],
      "dataset 'kmnist' not found", base=()),
    T("IDX garbage", [], str(TRAIN_IMAGES), write(str(TRAIN_IMAGES), b"garbage" * 100), base=IDX),
    T("IDX empty", [], "header empty", write(str(TRAIN_IMAGES), b""), base=IDX),
    T("IDX truncated", [], "(truncated)", edit_idx(TRAIN_IMAGES, lambda b: b[: len(b) // 2]), base=IDX),
    T("IDX extra bytes", [], "(extra bytes)", edit_idx(TRAIN_IMAGES, lambda b: b + b"\0" * 10), base=IDX),
    T("IDX 32x32 images", [], "images of 32x32 pixels", write(str(TRAIN_IMAGES), idx_images(20, 32)), base=IDX),
    T("IDX labels mismatch", [], "19 labels for 20 images",
      write(str(TRAIN_LABELS), idx_bytes(torch.zeros(19, dtype=torch.uint8))), base=IDX),
    T("IDX wrong ndim", [], "not an IDX file of 3-D",
      write(str(TRAIN_IMAGES), idx_bytes(torch.zeros(20, dtype=torch.uint8))), base=IDX),
    T("IDX .gz not gzip", [], "cannot be read as gzipped IDX",
      gz_only(lambda raw: (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip" * 50)), base=IDX),
    T("IDX .gz truncated", [], "train-images-idx3-ubyte.gz",
      gz_only(lambda raw: (raw / "train-images-idx3-ubyte.gz").write_bytes(
          (raw / "train-images-idx3-ubyte.gz").read_bytes()[:200])), base=IDX),
    T("IDX .gz of garbage", [], "train-labels-idx1-ubyte.gz",
      gz_only(lambda raw: __import__("gzip").open(raw / "train-labels-idx1-ubyte.gz", "wb").write(b"xx" * 40)),
      base=IDX),
    T("IDX unreadable", [], "cannot be read", unreadable(str(TRAIN_IMAGES)), base=IDX,
      skip="root reads any file" if ROOT else None),
    # -- image folders
    T("image_folder without root", ["dataset=image_folder", "device=cpu"], "dataset.root: missing", base=()),
    T("image_folder root missing", [], "dataset.root='no_such_folder' is not a folder",
      base=(*IMAGES, "dataset.root=no_such_folder")),
    T("image_folder root is a file", [], "is not a folder", base=(*IMAGES, "dataset.root=a_file.txt")),
    T("image_folder empty", [], "dataset.root='empty'", base=(*IMAGES, "dataset.root=empty")),
    T("image_folder classes without images", [], "dataset.root='noimg'", classes_without_images,
      base=(*IMAGES, "dataset.root=noimg")),
    T("garbage png", [], ("images/a/bad.png: cannot be read as an image", "dataset.skip_bad_files=true"),
      images_with("bad.png", b"garbage" * 20), base=IMAGES),
    T("empty jpg", [], "images/a/empty.jpg: cannot be read as an image", images_with("empty.jpg", b""), base=IMAGES),
    T("truncated png", [], "images/b/cut.png: cannot be read as an image", truncated_png, base=IMAGES),
    T("garbage png, streamed", ["dataset.in_memory=false"], "images/a/bad.png: cannot be read",
      images_with("bad.png", b"garbage" * 20), base=IMAGES),
    T("garbage png with 2 workers", ["dataset.num_workers=2"], "images/a/bad.png: cannot be read",
      images_with("bad.png", b"garbage" * 20), base=IMAGES),
    T("unreadable png", [], "images/a/0.png: cannot be read as an image (PermissionError", unreadable("images/a/0.png"),
      base=IMAGES, skip="root reads any file" if ROOT else None),
    T("every image bad, skipped", ["dataset.skip_bad_files=true"], "holds 0 readable image(s) (8 unreadable)",
      all_images_bad,
      base=IMAGES),
    T("skip_bad_files=maybe", ["dataset.skip_bad_files=maybe"], "dataset.skip_bad_files", base=IMAGES),
    T("image_folder channels=2", ["dataset.channels=2"], "dataset.channels: got 2", base=IMAGES),
    T("image_folder size=[0]", ["dataset.size=[0]"], "dataset.size: got [0]", base=IMAGES),
    T("image_folder val_fraction=0", ["dataset.val_fraction=0"], "dataset.val_fraction: got 0", base=IMAGES),
    T("image_folder test_fraction", ["dataset.test_fraction=0.95"], "dataset.test_fraction: got 0.95", base=IMAGES),
    # -- _target_ classes: importable, the right kind, the right arguments
    T("model target: no module", ["model=missing_module"], ("cannot import 'nosuch_module_xyz.Model'", "PYTHONPATH"),
      base=USER, env=PYTHONPATH),
    T("model target: module not on the path", ["model=not_autoencoder"], "cannot import 'mymodels.NotAnAutoencoder'",
      base=USER),
    T("model target: no such class", ["model=missing_class"], "cannot import 'mymodels.NoSuchModel'", base=USER,
      env=PYTHONPATH),
    T("model target: not an Autoencoder", ["model=not_autoencoder"], "not an aeexp Autoencoder and lacks forward_parts",
      base=USER, env=PYTHONPATH),
    T("model target: a function building a Linear", ["model=function_linear"], "not an aeexp Autoencoder",
      base=USER, env=PYTHONPATH),
    T("model target: no input_shape", ["model=no_shape"], "does not take these arguments", base=USER, env=PYTHONPATH),
    T("model target: builtins.dict", ["model=builtin_dict"], "model._target_: builtins.dict is not an aeexp Autoencoder",
      base=USER),
    T("model target: unknown keyword", ["model=tiny", "+model.colour=red"], "does not take these arguments",
      base=USER, env=PYTHONPATH),
    T("sparsity target: no module", ["sparsity=missing_module"], "cannot import 'nosuch_module_xyz.Sparse'",
      base=USER),
    T("sparsity target: no penalty", ["sparsity=no_penalty"], "not an aeexp Sparsity and lacks penalty, auxiliary",
      base=USER, env=PYTHONPATH),
    T("sparsity target: builtins.dict", ["sparsity=builtin_dict"], "not an aeexp Sparsity", base=USER),
    T("sparsity target: misspelt argument", ["sparsity=wrong_args"], "strenght", base=USER, env=PYTHONPATH),
    T("optimizer target: no module", ["optimizer=missing_module"], "optimizer._target_: cannot import", base=USER),
    T("optimizer target: misspelt argument", ["optimizer=sgd_typo"], "unexpected keyword argument 'lrr'", base=USER),
    T("scheduler target: no epochs argument", ["scheduler=step"], "optimizer, epochs from aeexp", base=USER),
    T("model target: drops its bottleneck", ["model=ignores_bottleneck"], "the model's bottleneck is a Identity",
      base=USER, env=PYTHONPATH),
    T("target is empty", ["+model._target_=''"], "model._target_: got ''"),
    # -- evaluate.py: the command line and the settings
    E("no run_dir", [], "run_dir: missing", run=""),
    E("run_dir missing", [], "no such directory", run="no_such_run"),
    E("run_dir is a file", [], "not a directory", run="a_file.txt"),
    E("run_dir without best.pt", [], "no checkpoints/best.pt", run="empty"),
    E("best.pt is a folder", [], "no checkpoints/best.pt", run="run", setup=lambda site: (
        (site / "run" / BEST).unlink(), (site / "run" / BEST).mkdir())),
    E("eval.foo", ["eval.foo=1"], "eval.foo: unknown key; valid keys here: level, cache, batch_size"),
    E("+eval.foo", ["+eval.foo=1"], "eval.foo: unknown key"),
    E("top-level foo", ["foo=1"], "foo: unknown key"),
    E("+foo", ["+foo=1"], "foo: unknown key; valid keys here: run_dir"),
    E("model=fc on evaluate", ["model=fc"], "model: got 'fc', but eval.yaml chooses no model"),
    E("device=nosuch", ["device=nosuch"], "device: got 'nosuch'"),
    E("device.name=tpu", ["device.name=tpu"], "device.name: got 'tpu'"),
    E("sweep without -m", ["eval.knn_k=1,2"], "eval.knn_k: got '1,2'"),
    E("eval=5", ["eval=5"], "eval: got 5, allowed: a mapping of keys"),
    E("run_dir interpolation", ["run_dir=${nosuch}"], "run_dir: cannot be resolved", run=""),
    E("eval.knn_k=0", ["eval.knn_k=0"], "eval.knn_k: got 0"),
    E("eval.batch_size=0", ["eval.batch_size=0"], "eval.batch_size: got 0"),
    E("eval.noise_levels<0", ["eval.noise_levels=[-1]"], "eval.noise_levels[0]: got -1"),
    E("eval.probe_train_size=1", ["eval.probe_train_size=1"], "eval.probe_train_size: got 1"),
    E("eval.seed=-1", ["eval.seed=-1"], "eval.seed: got -1"),
    E("eval.labels_per_class=[0]", ["eval.labels_per_class=[0]"], "eval.labels_per_class[0]: got 0"),
    E("eval.trust_targets=maybe", ["eval.trust_targets=maybe"], "eval.trust_targets"),
    # -- evaluate.py: settings against the run's data (64 training images, 10 classes)
    E("knn_k above the samples", ["eval.knn_k=64"], "eval.knn_k: got 64, allowed: 1 to 63"),
    E("labels_per_class above a class", ["eval.labels_per_class=[1,50]"], "eval.labels_per_class[1]: got 50"),
    E("probe_train_size below the classes", ["eval.probe_train_size=5"], "eval.probe_train_size: got 5"),
    # -- evaluate.py: the run's data
    E("IDX broken after training", [], str(TRAIN_IMAGES), write(str(TRAIN_IMAGES), b"garbage" * 100), run="run_idx"),
    E("dataset_root without data", ["dataset_root=empty"], "dataset 'fashion_mnist' not found", run="run_idx",
      skip="Debian's Fashion-MNIST would be used" if Path("/usr/share/datasets/fashion-mnist").is_dir() else None),
    E("dataset_root=[]", ["dataset_root=[]"], "dataset_root: got []"),
    # -- evaluate.py: crafted checkpoints (tests/test_trust.py's payloads)
    E("stored dataset _target_", [], "dataset._target_: shutil.copyfile", stored(
        lambda cfg, site: cfg.__setitem__("dataset", copy_payload(os.devnull, site / "victim.txt")))),
    E("stored model _target_", [], "model._target_: builtins.dict", stored(
        lambda cfg, site: cfg.__setitem__("model", {"_target_": "builtins.dict",
                                                    "payload": copy_payload(os.devnull, site / "victim.txt")}))),
    E("pickle copyfile", [], "aeexp refuses to load it", pickle_payload("copyfile")),
    E("pickle os.system", [], "aeexp refuses to load it", pickle_payload("os_system")),
    E("yaml python tag", [], "!!python/", yaml_tag("os_system")),
    E("checkpoint truncated", [], "cannot be read (truncated or corrupted?)", checkpoint_bytes(lambda b: b[: len(b) // 2])),
    E("checkpoint garbage", [], "cannot be read (truncated or corrupted?)", checkpoint_bytes(lambda b: b"junk" * 100)),
    E("checkpoint empty", [], "cannot be read (truncated or corrupted?)", checkpoint_bytes(lambda b: b"")),
    E("weights do not fit", [], "the weights do not fit", stored(set_path("model.latent_dim", 7))),
    E("stored model name unknown", [], "model.name", stored(set_path("model.name", "nosuch"))),
    E("stored trainer value bad", [], "trainer.epochs: got 0", stored(set_path("trainer.epochs", 0))),
    E("stored seed out of range", [], "seed: got -5", stored(set_path("seed", -5))),
]


def test_the_battery_is_large_and_ids_are_unique():
    assert len(CASES) >= 100
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@dataclass
class Result:
    site: Path
    before: dict[str, str]
    code: int
    output: str


@pytest.fixture(scope="module")
def results(request, template: Path, tmp_path_factory) -> dict[str, Result]:
    """Every selected case, prepared in its own copy of the site and run, several at a time."""
    selected = selected_cases(request.session)
    root = tmp_path_factory.mktemp("cases")
    prepared, calls = [], []
    for i, case in enumerate(selected):
        site = Path(shutil.copytree(template, root / f"{i:03d}", symlinks=True))
        if case.setup is not None:
            case.setup(site)
        prepared.append((case, site, snapshot(site)))
        calls.append(dict(script=case.script, args=list(case.args), cwd=site, timeout=60, env=case.env))
    outcomes = run_many(calls)
    return {case.id: Result(site, snap, code, output)
            for (case, site, snap), (code, output) in zip(prepared, outcomes)}


# The inner loop (pytest -m "not slow") runs one case of each kind through train.py: the
# command line (an unknown model option; test_command_line.py checks the other refusals' lines),
# missing data, a damaged data file, a user class that cannot be imported; through evaluate.py,
# a missing run. The rest are marked slow. Kinds with their inner-loop case elsewhere: a bad
# value through train.py in test_run_dirs.py (trainer.epochs=0: exit 2, one line, nothing left
# behind); a missing image folder in test_image_folder.py; in test_trust.py, a stored _target_
# refused in evaluate's words (the dataset route) and a damaged checkpoint's message.
INNER_LOOP = {"train:model=nosuch", "train:kmnist missing", "train:IDX truncated", "train:model target: no module",
              "evaluate:run_dir missing"}


def test_the_inner_loop_cases_exist():
    assert INNER_LOOP <= {case.id for case in CASES}


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=() if case.id in INNER_LOOP else pytest.mark.slow)
                                  for case in CASES])
def test_bad_input_is_one_line(case: Case, results: dict[str, Result]):
    if case.skip:
        pytest.skip(case.skip)
    result = results[case.id]
    output = result.output
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert result.code == case.code, output
    assert len(lines) == 1, output
    for words in (case.expect,) if isinstance(case.expect, str) else case.expect:
        assert words in lines[0], output
    after = snapshot(result.site)
    changed = sorted(path for path, digest in result.before.items() if after.get(path) != digest)
    assert not changed, f"files changed or removed: {changed}"
    leftovers = sorted(path for path in after if path not in result.before and path.endswith(".tmp"))
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert (result.site / "victim.txt").read_bytes() == VICTIM_TEXT and not (result.site / "created.txt").exists()
    shutil.rmtree(result.site)  # a failing case keeps its folder to look at


# ------------------------------------------------------- skip_bad_files, the good side
def test_skip_bad_files_trains_on_the_rest_and_names_them(template: Path, tmp_path: Path):
    site = Path(shutil.copytree(template, tmp_path / "site", symlinks=True))
    (site / "images" / "a" / "bad.png").write_bytes(b"garbage" * 20)
    (site / "images" / "b" / "empty.jpg").write_bytes(b"")
    code, output = run_cli("train.py", [*IMAGES, "dataset.skip_bad_files=true", "hydra.run.dir=out"], site)
    assert code == 0 and "Traceback" not in output, output
    [warning] = [line for line in output.splitlines() if "unreadable image file(s)" in line]
    assert "skipped 2 unreadable image file(s)" in warning and "bad.png" in warning and "empty.jpg" in warning
    assert "data image_folder: 6 train" in output, output
