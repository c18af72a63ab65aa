"""Linear probes and kNN: how much of the class is linearly (or locally) in the code.

The linear probe is multinomial logistic regression on standardized features, fitted with
full-batch L-BFGS in torch, so it can use every training label (60k x 784 raw pixels) in
seconds on two CPU cores (see the README's Evaluate section for measured times). The same classifier on raw pixels is the baseline a code should approach
or beat (Fashion-MNIST: 0.842). ``probe_train_size`` caps the training samples (a seeded
random subset) where even that is too slow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm


class Standardizer:
    """Per-feature (x - mean) / std from the training features. Near-constant features
    (an always-black border pixel, a dead latent) get the mean std as their scale, so a
    tiny test-time deviation is not blown up."""

    def __init__(self, features: torch.Tensor):
        self.mean = features.mean(0)
        std = features.std(0)
        self.std = std.clamp_min(1e-2 * std.mean().clamp_min(1e-12))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def subset(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    """A seeded random subset of ``size`` indices of ``n`` (None: all of them)."""
    if size is None or size >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def fit_softmax(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-4,
                max_iter: int = 150, desc: str = "probe", progress: bool = True) -> torch.nn.Linear:
    """Logistic regression: minimise mean cross-entropy + l2/2 ||W||^2 with L-BFGS.

    The logits are computed class-major, (classes, samples) = W X^T + b, and the loss is
    ``cross_entropy`` over dimension 1 of that (1, classes, samples) tensor: the same sum,
    but the log-softmax then runs along contiguous memory across samples instead of over
    rows of ten, which made each loss-and-gradient evaluation 2-3x faster on 2 CPU cores
    (55k x 64 codes; the same loss and gradient, ``tests/test_eval_speedups.py``)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(features.shape[1], num_classes, dtype=features.dtype)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    bar = tqdm(total=max_iter, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress else True)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.addmm(linear.bias[:, None], linear.weight, features.T)  # (classes, samples)
        loss = F.cross_entropy(logits[None], labels[None]) + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        bar.update(1)
        return loss

    optimizer.step(closure)
    bar.close()
    return linear


@torch.no_grad()
def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).double().mean().item()


def probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, l2: float = 1e-4, max_iter: int = 150, train_size: int | None = None,
                   seed: int = 0, desc: str = "probe", progress: bool = True) -> float:
    """Test accuracy of logistic regression fitted on (a subset of) the training features."""
    picked = subset(len(train_features), train_size, seed)
    if picked is not None:
        train_features, train_labels = train_features[picked], train_labels[picked]
    scale = Standardizer(train_features)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    linear = fit_softmax(scale(train_features), train_labels, num_classes, l2, max_iter, desc, progress)
    with torch.no_grad():
        return accuracy(linear(scale(test_features)).argmax(1), test_labels)


@torch.no_grad()
def knn_accuracy(train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 5, chunk: int = 256, progress: bool = True,
                 train_block: int = 4096) -> float:
    """k-nearest-neighbour vote in Euclidean distance between raw codes (the geometry the
    decoder sees); a tie goes to the class of the nearer neighbours.

    The distances of a chunk of ``chunk`` queries to a block of ``train_block`` training codes
    are one ``addmm`` (|t|^2 - 2 q.t; |q|^2 is the same for every training row); each block
    keeps its k nearest, and the k nearest of those are the chunk's neighbours. Blocks of
    256 x 4096 (4 MB) stay in the CPU's caches, where one 256 x 55k row of distances (56 MB)
    went through memory twice (written, then read by ``topk``): 30-40% faster on 2 cores, the
    same neighbours (``tests/test_eval_speedups.py``, against exact distances)."""
    k = min(k, len(train_codes))
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_sq = train_codes.pow(2).sum(1)
    blocks = [(begin, train_codes[begin : begin + train_block], train_sq[begin : begin + train_block])
              for begin in range(0, len(train_codes), train_block)]
    # Votes weigh 1, plus a tiny bonus for rank so ties break toward nearer neighbours.
    weights = 1.0 + 1e-3 * torch.arange(k, 0, -1, dtype=torch.float32) / k
    correct = 0
    for begin in tqdm(range(0, len(test_codes), chunk), desc="kNN", leave=False, dynamic_ncols=True,
                      disable=None if progress else True):
        queries = test_codes[begin : begin + chunk]
        distances, indices = [], []
        for offset, block, block_sq in blocks:
            found = torch.addmm(block_sq, queries, block.T, alpha=-2).topk(min(k, len(block)), dim=1, largest=False)
            distances.append(found.values)
            indices.append(found.indices + offset)
        best = torch.cat(distances, 1).topk(k, dim=1, largest=False).indices  # nearest first
        nearest = torch.cat(indices, 1).gather(1, best)
        votes = torch.zeros(len(queries), num_classes).scatter_add_(1, train_labels[nearest], weights.expand(len(queries), k))
        correct += (votes.argmax(1) == test_labels[begin : begin + chunk]).sum().item()
    return correct / len(test_codes)
