"""Reconstruction and latent figures of a split (validation or test), in one pass of the
model, with the codes kept for the probes; the figures themselves (and their units) are
:mod:`aeexp.metrics`, shared with the trainer's validation.
"""

from __future__ import annotations

from typing import Iterator

import torch
from tqdm import tqdm

from aeexp.data.images import to_float
from aeexp.metrics import ReconstructionStats


def float_batches(images: torch.Tensor, batch_size: int, device: torch.device, desc: str | None = None,
                  progress: bool = True) -> Iterator[torch.Tensor]:
    """uint8 images in order, as float batches in [0, 1] on ``device``, with a tqdm bar."""
    starts = range(0, len(images), batch_size)
    bar = tqdm(starts, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress and desc else True)
    for begin in bar:
        yield to_float(images[begin : begin + batch_size].to(device))


@torch.no_grad()
def encode_all(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
               desc: str | None = None, progress: bool = True) -> torch.Tensor:
    """The codes (N, features) of every image, on the CPU, in eval mode."""
    model.eval()
    codes = [model.encode(x).reshape(len(x), -1).float().cpu()
             for x in float_batches(images, batch_size, device, desc, progress)]
    return torch.cat(codes)


@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
                           device: torch.device, progress: bool = True,
                           split: str = "test") -> tuple[dict[str, float], torch.Tensor]:
    """Reconstruction and sparsity figures of one split's images (keys ``<split>_mse``, ...;
    :class:`aeexp.metrics.ReconstructionStats`), and their codes (CPU)."""
    model.eval()
    stats, codes = ReconstructionStats(), []
    for x in float_batches(images, batch_size, device, f"{split} reconstruction", progress):
        x_hat, z = model(x)
        stats.update(x, x_hat, z)
        codes.append(z.reshape(len(z), -1).float().cpu())
    f = stats.figures()
    figures = {f"{split}_{key}": f[key] for key in ("mse", "sse_per_image", "psnr", "fvu", "l0")}
    if split == "test":  # the test split's keep their established names
        figures.update(mean_image_mse=f["mean_image_mse"], dead_fraction=f["dead_fraction"], code_size=f["code_size"])
    else:
        figures.update({f"{split}_mean_image_mse": f["mean_image_mse"], f"{split}_dead_fraction": f["dead_fraction"]})
    return figures, torch.cat(codes)
