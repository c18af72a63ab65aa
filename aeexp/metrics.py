"""The figures a reconstruction is judged by, implemented once: the trainer's validation
and ``evaluate.py`` both stream their batches through these accumulators.

Units: ``mse`` is per pixel (PyTorch's mean over every pixel of the set, not a mean of
batch means), ``sse_per_image`` the same error summed over an image's pixels (Hinton &
Salakhutdinov's unit), ``psnr`` 10 log10(1 / mse) for pixels in [0, 1], ``fvu`` the MSE
over the set's variance around its mean image (the error of always predicting that mean;
Gao et al. 2024's normalized MSE: 1 = learned nothing, 0 = perfect). Code figures: ``l0``
nonzero entries per sample, ``dead_fraction`` features never nonzero over the set,
``mean_activation`` mean |z|, ``firing_rate`` how often each feature is nonzero. Sums are
kept in float64 on the batches' device, so a GPU validation never syncs per batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1]."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


class ReconstructionStats:
    """Reconstruction and code figures of a set, from ``update(x, x_hat, z)`` per batch."""

    def __init__(self) -> None:
        self.samples = 0
        self.pixels = 0  # per sample
        self.squared_error: torch.Tensor | None = None
        self.pixel_sum: torch.Tensor | None = None
        self.pixel_square_sum: torch.Tensor | None = None
        self.fired: torch.Tensor | None = None  # per feature: samples where it is nonzero
        self.magnitude: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> None:
        x64 = x.double()
        flat_z = z.reshape(len(z), -1)
        fired = (flat_z != 0).sum(0, dtype=torch.float64)
        sums = ((x_hat.float() - x).pow(2).sum(dtype=torch.float64), x64.sum(0), x64.pow(2).sum(0), fired,
                flat_z.float().abs().sum(dtype=torch.float64))
        if self.squared_error is None:
            self.squared_error, self.pixel_sum, self.pixel_square_sum, self.fired, self.magnitude = sums
        else:
            self.squared_error += sums[0]
            self.pixel_sum += sums[1]
            self.pixel_square_sum += sums[2]
            self.fired += sums[3]
            self.magnitude += sums[4]
        self.samples += len(x)
        self.pixels = x[0].numel()

    def figures(self) -> dict[str, Any]:
        """Plain floats (one device sync), and ``firing_rate`` as a tensor."""
        n, pixels = self.samples, self.pixels
        if n == 0:
            raise ValueError("no batches were measured")
        mse = self.squared_error.item() / (n * pixels)
        variance = ((self.pixel_square_sum - self.pixel_sum.pow(2) / n).sum() / (n * pixels)).item()
        firing_rate = self.fired / n
        features = len(firing_rate)
        return {
            "mse": mse,
            "sse_per_image": mse * pixels,
            "psnr": psnr(mse),
            "fvu": mse / variance if variance > 0 else math.nan,
            "mean_image_mse": variance,
            "l0": (self.fired.sum() / n).item(),
            "dead_fraction": (firing_rate == 0).double().mean().item(),
            "mean_activation": (self.magnitude / (n * features)).item(),
            "code_size": features,
            "firing_rate": firing_rate,
        }


class DenoisingStats:
    """Reconstructions of noisy inputs against the clean images, beside the noisy inputs'
    own error (what doing nothing scores), from ``update(clean, noisy, x_hat)`` per batch."""

    def __init__(self) -> None:
        self.denoised = self.noisy = None
        self.values = 0

    @torch.no_grad()
    def update(self, clean: torch.Tensor, noisy: torch.Tensor, x_hat: torch.Tensor) -> None:
        denoised = (x_hat.float() - clean).pow(2).sum(dtype=torch.float64)
        noisy_error = (noisy - clean).pow(2).sum(dtype=torch.float64)
        self.denoised = denoised if self.denoised is None else self.denoised + denoised
        self.noisy = noisy_error if self.noisy is None else self.noisy + noisy_error
        self.values += clean.numel()

    def figures(self) -> dict[str, float]:
        mse, noisy_mse = self.denoised.item() / self.values, self.noisy.item() / self.values
        return {"mse": mse, "psnr": psnr(mse), "noisy_mse": noisy_mse, "noisy_psnr": psnr(noisy_mse)}


# ------------------------------------------------------------------ ground truth (dataset=sparse_features)
RECOVERY_THRESHOLD = 0.9  # a true feature counts as recovered when some atom's cosine reaches this


@torch.no_grad()
def decoder_atoms(model: torch.nn.Module, code_size: int, chunk: int = 4096) -> torch.Tensor:
    """The learned dictionary, (code_size, output values): row j is ``model.decode(e_j) -
    model.decode(0)`` for the unit code e_j, flattened. For an affine decoder (``model=sae``,
    a one-layer ``fc`` whose ``output_activation`` is ``none``) that is exactly its j-th
    column; for a nonlinear decoder it is the decoder's response to a unit code. Codes are
    (batch, features) for every model. Float32, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    base = model.decode(torch.zeros(1, code_size, device=device)).float().reshape(1, -1)
    atoms = [model.decode(torch.eye(code_size, device=device)[begin:begin + chunk]).float().reshape(
        min(chunk, code_size - begin), -1) - base for begin in range(0, code_size, chunk)]
    model.train(was_training)
    return torch.cat(atoms)


def max_cosines(true_features: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """For each true feature (rows of ``true_features``, (F, d)), its largest cosine
    similarity with any learned atom (rows of ``atoms``, (F', d)), up to sign: (F,). Up to
    sign because a code may be negative (``topk`` without ``relu`` keeps negative values, a
    ``leaky_relu`` code has them), and then a flipped atom serves as well. Zero atoms (dead
    or never-trained columns) have cosine 0 with everything."""
    true = torch.nn.functional.normalize(true_features.double(), dim=1)
    learned = torch.nn.functional.normalize(atoms.to(true.device).double(), dim=1)  # zero rows stay zero
    return (true @ learned.T).abs().amax(1)


def feature_recovery(true_features: torch.Tensor, atoms: torch.Tensor,
                     threshold: float = RECOVERY_THRESHOLD) -> dict[str, float]:
    """``mmcs``: the mean over true features of their max cosine with a learned atom (1 = every
    feature has an exact atom; Sharkey et al. 2022); ``recovered_90``: the fraction of true
    features whose max cosine is >= ``threshold`` (0.9; the key names the threshold in percent)."""
    best = max_cosines(true_features, atoms)
    return {"mmcs": best.mean().item(), f"recovered_{threshold * 100:g}": (best >= threshold).double().mean().item()}


def model_feature_recovery(model: torch.nn.Module, true_features: torch.Tensor, code_size: int) -> dict[str, float]:
    """:func:`feature_recovery` of ``model``'s decoder atoms (:func:`decoder_atoms`) against the
    data's true dictionary (``ImageSplits.ground_truth``)."""
    return feature_recovery(true_features, decoder_atoms(model, code_size))
