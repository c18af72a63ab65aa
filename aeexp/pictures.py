"""The pictures of the first seed's figures, as image tensors (C, H, W) in [0, 1].

(a) inputs above their reconstructions, (b) the codes of a batch of samples as an image
(samples x features), (c) the decoder's dictionary: its output for each one-hot code.
The trainer sends them (:func:`training_pictures`) to TensorBoard and to PNG files in the run
directory; `evaluate.py` draws the same panels on the test split.
"""

from __future__ import annotations

import math

import torch
from torchvision.utils import make_grid


def reconstruction_rows(*rows: torch.Tensor) -> torch.Tensor:
    """Batches of images stacked as rows of one grid (e.g. inputs above reconstructions)."""
    images = torch.cat([row.detach().float().clamp(0, 1).cpu() for row in rows])
    return make_grid(images, nrow=len(rows[0]), padding=2, pad_value=1.0)


def code_image(z: torch.Tensor) -> torch.Tensor:
    """Codes as a grayscale image, one row per sample, one column per feature; brightness
    is the magnitude relative to the largest, so zeros (inactive features) are black."""
    magnitude = z.detach().float().reshape(len(z), -1).abs().cpu()
    return (magnitude / magnitude.max().clamp_min(1e-12)).unsqueeze(0)


@torch.no_grad()
def dictionary_grid(model: torch.nn.Module, code_shape: tuple[int, ...]) -> torch.Tensor:
    """The decoder's output for each one-hot code, each atom scaled to its own range."""
    features = math.prod(code_shape)
    device = next(model.parameters()).device
    one_hot = torch.eye(features, device=device).reshape(features, *code_shape)
    atoms = torch.cat([model.decode(chunk) for chunk in one_hot.split(256)]).float().cpu()
    return make_grid(atoms, nrow=math.ceil(math.sqrt(features)), padding=1, normalize=True,
                     scale_each=True, pad_value=1.0)


def latent_scatter(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Two-dimensional codes as a scatter plot coloured by class, like the first seed's
    784-128-64-32-2 figure and the second seed's 2-D latent plot; an RGB image tensor."""
    import matplotlib

    matplotlib.use("Agg")  # renders without a display
    import matplotlib.pyplot as plt
    import numpy as np

    points = codes.detach().float().reshape(len(codes), -1).cpu().numpy()
    classes = labels.detach().cpu().numpy()
    num_classes = int(classes.max()) + 1 if len(classes) else 1
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        scatter = axes.scatter(points[:, 0], points[:, 1], c=classes, s=2, alpha=0.6,
                               cmap="tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "viridis",
                               vmin=-0.5, vmax=num_classes - 0.5)
        figure.colorbar(scatter, ax=axes, ticks=range(num_classes) if num_classes <= 20 else None, label="class")
        axes.set_xlabel("z[0]")
        axes.set_ylabel("z[1]")
        axes.set_title(f"validation codes ({len(points)} samples)")
        figure.tight_layout()
        figure.canvas.draw()
        rgba = torch.from_numpy(np.asarray(figure.canvas.buffer_rgba()).copy())
    finally:
        plt.close(figure)
    return rgba[..., :3].permute(2, 0, 1).float() / 255.0


@torch.no_grad()
def training_pictures(model: torch.nn.Module, fixed_batch: torch.Tensor, code_batch: torch.Tensor,
                      noise=None, validation_codes=None) -> dict[str, torch.Tensor]:
    """The panels a training run shows every ``trainer.image_every`` epochs (eval mode):
    ``reconstructions`` of ``fixed_batch``, the ``codes`` of ``code_batch``, the decoder's
    ``dictionary``, with noise on ``denoising`` (noisy / denoised / clean rows), and with a
    2-D code ``latent_scatter`` of ``validation_codes()`` (codes and labels, computed only then)."""
    model.eval()
    x_hat, _ = model(fixed_batch)
    _, codes = model(code_batch)
    pictures = {
        "reconstructions": reconstruction_rows(fixed_batch, x_hat),
        "codes": code_image(codes),
        "dictionary": dictionary_grid(model, tuple(codes.shape[1:])),
    }
    if noise is not None and noise.active:
        noisy = noise(fixed_batch, noise.val_generator(fixed_batch.device))
        pictures["denoising"] = reconstruction_rows(noisy, model(noisy)[0], fixed_batch)
    if codes[0].numel() == 2 and validation_codes is not None:
        pictures["latent_scatter"] = latent_scatter(*validation_codes())
    return pictures
