"""The evaluation's pictures, as PNG files in ``<run>/eval/`` and images in TensorBoard.

They reuse the trainer's panels (:mod:`aeexp.pictures`) on the test split, the scatter of
the codes coloured by class included (there for any code width, wider codes on their first two
principal components), and add what only evaluation has: the PCA reconstruction beside the
model's, the codes sorted by class, and denoising triplets per noise level.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from aeexp.data.images import to_float
from aeexp.evaluation.denoising import noise_at
from aeexp.pictures import (
    IMAGE_ONLY_NOTE, code_image, code_scatter, dictionary_grid, figure_image, is_image_batch, reconstruction_rows,
    save_png,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def write_figures(model: torch.nn.Module, data, test_codes: torch.Tensor, pca_images: torch.Tensor,
                  run_noise, settings, device: torch.device, out_dir: Path, writer: SummaryWriter,
                  step: int) -> list[str]:
    """Write every picture; return the PNG file names. Vectors get the codes and the scatter only
    (reconstructions, dictionary atoms and denoising are pictures of images)."""
    model.eval()
    n = settings.num_images
    x = to_float(data.test_images[:n]).to(device)
    pictures = {}
    if is_image_batch(x):
        x_hat, _ = model(x)
        # inputs, the model's reconstructions, PCA's at the same code size
        pictures["reconstructions"] = reconstruction_rows(x, x_hat, pca_images[:n])
        pictures["dictionary"] = dictionary_grid(model, tuple(model.encode(x[:1]).shape[1:]))
    else:
        log.info("%s", IMAGE_ONLY_NOTE)
    order = data.test_labels[: settings.code_samples].argsort(stable=True)
    pictures["codes"] = code_image(test_codes[: settings.code_samples][order])
    triplets = []
    for level in settings.noise_levels if is_image_batch(x) else ():
        _, noise = noise_at(run_noise, level, settings.seed)
        noisy = noise(x, noise.val_generator(device))
        triplets += [noisy, model(noisy)[0], x]
    if triplets:
        pictures["denoising"] = reconstruction_rows(*triplets)
    written = []
    for name, image in pictures.items():
        save_png(image, out_dir / f"{name}.png")
        writer.add_image(f"eval/{name}", image, step)
        written.append(f"{name}.png")
    m = min(settings.scatter_samples, len(test_codes))
    figure = code_scatter(test_codes[:m], data.test_labels[:m], f"test codes ({m} samples, {test_codes.shape[1]}-D)")
    scatter = figure_image(figure)  # rendered once (closes the figure), for the PNG and TensorBoard
    save_png(scatter, out_dir / "latent_scatter.png")
    writer.add_image("eval/latent_scatter", scatter, step)
    written.append("latent_scatter.png")
    return written

