"""Semi-supervised learning with few labels: the first seed's use of the encoder.

The autoencoder has seen every training image without labels; here only N labelled
images per class are given. Three classifiers of one shape (encoder -> fixed
standardization -> a shallow head: Linear, ReLU, Linear) are trained on those labels and
scored on the whole test split:

- ``frozen``: the trained encoder fixed, only the head learns (``head_steps`` AdamW steps);
- ``fine_tuned``: starting from that, encoder and head learn together for ``head_steps``
  more steps at ``finetune_lr``;
- ``scratch``: the same architecture freshly initialised, all of it trained for
  2 x ``head_steps`` steps at ``head_lr``: what the labels alone achieve.

The standardization uses code statistics over the unlabelled training images (which
semi-supervised learning may use), from the trained encoder or the fresh one. Everything
runs in eval mode (no dropout; lifetime sparsity off, as in evaluation), with no
validation split: with ten labels per class there is none to spare, so the step counts
are fixed in advance.

The many small training steps run on ``step_threads`` CPU threads (1 by default): with two
threads every tiny step waits for both cores, so on a 2-core machine that another process
keeps busy the same work took 143 s instead of 2.3 s.

The encoder of the ``frozen`` classifier never changes, so its head trains on the codes of
the labelled images computed once (``train_codes``, the codes the linear probe and kNN use
too) rather than through an encoder forward pass per step, and it is tested on the test
codes: the same minibatches, initialisation and updates as through the frozen encoder
(``tests/test_eval_speedups.py`` checks both ways agree). The trained encoder's
standardization comes from those training codes as well.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from aeexp.data.images import to_float
from aeexp.evaluation.baseline_cache import fingerprint
from aeexp.evaluation.probes import Standardizer
from aeexp.evaluation.reconstruction import encode_all


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` random training samples of each class (all of a class
    that has fewer), seeded so every run of a sweep gets the same labels."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(picked)


class CodeClassifier(nn.Module):
    """encoder (with its bottleneck) -> standardization -> Linear, ReLU, Linear."""

    def __init__(self, autoencoder: nn.Module, scale: Standardizer, hidden: int, num_classes: int):
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("mean", scale.mean.clone())
        self.register_buffer("std", scale.std.clone())
        self.head = nn.Sequential(nn.Linear(len(scale.mean), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.autoencoder.encode(x).reshape(len(x), -1).float()
        return self.head((z - self.mean) / self.std)


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` for a while (None: unchanged)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(classifier: CodeClassifier, params: list[nn.Parameter], images: torch.Tensor,
                     labels: torch.Tensor, steps: int, lr: float, weight_decay: float, batch_size: int,
                     seed: int, desc: str, progress: bool, step_threads: int | None = 1) -> None:
    """AdamW on (mini)batches of the labelled images; the model stays in eval mode."""
    classifier.eval()
    device = classifier.mean.device
    _fit(classifier, params, to_float(images).to(device), labels.to(device), steps, lr, weight_decay, batch_size,
         seed, desc, progress, step_threads)


def train_head_on_codes(classifier: CodeClassifier, codes: torch.Tensor, labels: torch.Tensor, steps: int,
                        lr: float, weight_decay: float, batch_size: int, seed: int, desc: str, progress: bool,
                        step_threads: int | None = 1) -> None:
    """What :func:`train_classifier` does to the head alone over a frozen encoder, on the
    encoder's precomputed ``codes`` of the labelled images: the same seeded minibatches and
    AdamW updates, without an encoder forward pass per step."""
    classifier.eval()
    device = classifier.mean.device
    standardized = (codes.to(device).float() - classifier.mean) / classifier.std
    _fit(classifier.head, list(classifier.head.parameters()), standardized, labels.to(device), steps, lr,
         weight_decay, batch_size, seed, desc, progress, step_threads)


def _fit(module: nn.Module, params: list[nn.Parameter], x_all: torch.Tensor, y_all: torch.Tensor, steps: int,
         lr: float, weight_decay: float, batch_size: int, seed: int, desc: str, progress: bool,
         step_threads: int | None) -> None:
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    with threads(step_threads):
        _train_steps(module, optimizer, x_all, y_all, steps, batch_size, g, desc, progress)


def _train_steps(classifier, optimizer, x_all, y_all, steps, batch_size, g, desc, progress) -> None:
    device = x_all.device
    for _ in tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True, disable=None if progress else True):
        if len(x_all) > batch_size:
            pick = torch.randperm(len(x_all), generator=g)[:batch_size].to(device)
            x, y = x_all[pick], y_all[pick]
        else:
            x, y = x_all, y_all
        loss = F.cross_entropy(classifier(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    classifier.eval()
    device = classifier.mean.device
    correct = 0
    for begin in range(0, len(images), batch_size):
        x = to_float(images[begin : begin + batch_size].to(device))
        correct += (classifier(x).argmax(1).cpu() == labels[begin : begin + batch_size]).sum().item()
    return correct / len(images)


@torch.no_grad()
def head_accuracy(classifier: CodeClassifier, codes: torch.Tensor, labels: torch.Tensor) -> float:
    """The classifier's test accuracy from its encoder's precomputed ``codes`` (the head alone)."""
    classifier.eval()
    device = classifier.mean.device
    z = (codes.to(device).float() - classifier.mean) / classifier.std
    return (classifier.head(z).argmax(1).cpu() == labels).double().mean().item()


ScratchCache = Callable[[dict[str, Any], Callable[[], dict[str, float]]], dict[str, float]]
"""``(key, compute) -> values``: where the scratch accuracies are kept (the evaluation's
baseline cache); ``compute()`` gives them when nothing is kept for ``key``."""


def semi_supervised(model: nn.Module, fresh_model: Callable[[], nn.Module], data: Any, settings: Any,
                    device: torch.device, train_codes: torch.Tensor | None = None,
                    test_codes: torch.Tensor | None = None,
                    scratch_cache: ScratchCache | None = None) -> list[dict[str, Any]]:
    """One row per N in ``settings.labels_per_class``: test accuracies of the three classifiers.
    ``train_codes`` / ``test_codes``: the trained model's codes of the splits (CPU), where the
    caller has them already; computed here otherwise.

    The ``scratch`` classifier never sees the trained weights: it depends on the architecture,
    its seeded initialisation, the data and the settings only, so the runs of a sweep that share
    an architecture (a learning-rate or seed sweep) share it, like the PCA baseline. With
    ``scratch_cache`` it is looked up by :func:`scratch_key` (the fresh model's structure and
    initial weights, and the settings it trains with) and computed once."""
    num_classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    s = settings
    rows = []

    def codes_of(autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return encode_all(autoencoder, images, s.batch_size, device)

    if train_codes is None:
        train_codes = codes_of(model, data.train_images)
    if test_codes is None:
        test_codes = codes_of(model, data.test_images)
    trained_scale = Standardizer(train_codes)
    torch.manual_seed(s.seed)  # one fresh initialisation, copied for each N
    initial = fresh_model().to(device).eval()
    compute_scratch = lambda: scratch_accuracies(initial, data, s, device, num_classes)  # noqa: E731
    scratch = compute_scratch() if scratch_cache is None else scratch_cache(scratch_key(initial, s), compute_scratch)
    for per_class in s.labels_per_class:
        picked = labelled_subset(data.train_labels, per_class, s.seed)
        x, y = data.train_images[picked], data.train_labels[picked]
        common = dict(weight_decay=s.weight_decay, batch_size=s.head_batch_size, seed=s.seed, progress=s.progress,
                      step_threads=s.step_threads)
        # Frozen encoder: only the head learns.
        torch.manual_seed(s.seed)
        encoder = copy.deepcopy(model).to(device)
        for p in encoder.parameters():
            p.requires_grad_(False)
        classifier = CodeClassifier(encoder, trained_scale, s.head_hidden, num_classes).to(device)
        train_head_on_codes(classifier, train_codes[picked], y, s.head_steps, s.head_lr,
                            desc=f"semi-supervised {per_class}/class: frozen", **common)
        frozen = head_accuracy(classifier, test_codes, data.test_labels)
        # Fine-tuned: from the frozen classifier, encoder and head together.
        for p in encoder.parameters():
            p.requires_grad_(True)
        train_classifier(classifier, list(classifier.parameters()), x, y, s.head_steps, s.finetune_lr,
                         desc=f"semi-supervised {per_class}/class: fine-tuned", **common)
        fine_tuned = test_accuracy(classifier, data.test_images, data.test_labels, s.batch_size)
        rows.append({"labels_per_class": int(per_class), "labels": len(picked), "frozen": frozen,
                     "fine_tuned": fine_tuned, "scratch": float(scratch[f"scratch_{int(per_class)}"])})
    return rows


def scratch_accuracies(initial: nn.Module, data: Any, settings: Any, device: torch.device,
                       num_classes: int) -> dict[str, float]:
    """``{"scratch_<N>": accuracy}``: for each N, a copy of the fresh ``initial`` model with a
    fresh head (seeded), all of it trained for 2 x ``head_steps`` on the N labelled images per class."""
    s = settings
    initial_scale = Standardizer(encode_all(initial, data.train_images, s.batch_size, device))
    accuracies = {}
    for per_class in s.labels_per_class:
        picked = labelled_subset(data.train_labels, per_class, s.seed)
        torch.manual_seed(s.seed)
        fresh = copy.deepcopy(initial)
        classifier = CodeClassifier(fresh, initial_scale, s.head_hidden, num_classes).to(device)
        train_classifier(classifier, list(classifier.parameters()), data.train_images[picked],
                         data.train_labels[picked], 2 * s.head_steps, s.head_lr, s.weight_decay, s.head_batch_size,
                         s.seed, f"semi-supervised {per_class}/class: scratch", s.progress, s.step_threads)
        accuracies[f"scratch_{int(per_class)}"] = test_accuracy(classifier, data.test_images, data.test_labels,
                                                                s.batch_size)
    return accuracies


def scratch_key(initial: nn.Module, settings: Any) -> dict[str, Any]:
    """What the scratch accuracies depend on besides the data: the fresh model's structure
    (its repr: layers, activations, bottleneck) and initial weights and buffers (a digest), and
    the settings that train and score it."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in initial.state_dict().items():
        digest.update(name.encode())
        digest.update(fingerprint(tensor).encode())
    s = settings
    return {"model": repr(initial), "initial_state": digest.hexdigest(),
            "labels_per_class": [int(n) for n in s.labels_per_class], "head_hidden": int(s.head_hidden),
            "head_steps": int(s.head_steps), "head_lr": float(s.head_lr), "weight_decay": float(s.weight_decay),
            "head_batch_size": int(s.head_batch_size), "batch_size": int(s.batch_size), "seed": int(s.seed)}
