"""The pictures of the first seed's figures, shared by training and evaluation.

(a) inputs above their reconstructions, (b) the codes of a batch of samples as an image
(samples x features), (c) the decoder's dictionary: its output for each one-hot code, all
three as image tensors (C, H, W) in [0, 1]; (d) a scatter of the codes coloured by class, as
a matplotlib figure (:func:`code_scatter`; :func:`figure_image` turns it into such a tensor).
The trainer sends them (:func:`training_pictures`) to TensorBoard and to PNG files in the run
directory; `evaluate.py` draws the same panels on the test split.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def make_grid(images: torch.Tensor, **kwargs) -> torch.Tensor:
    """torchvision's ``make_grid``, imported at the first picture: importing torchvision costs
    about 2 s, which a command refused before training (or a run without pictures) need not pay."""
    from torchvision.utils import make_grid as torchvision_make_grid

    return torchvision_make_grid(images, **kwargs)


def save_png(image: torch.Tensor, path) -> None:
    """An image tensor (C, H, W) in [0, 1] as a PNG file (torchvision's ``save_image``)."""
    from torchvision.utils import save_image

    save_image(image, path)


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


def _pyplot():
    """matplotlib's pyplot on the Agg backend: files and tensors only, no display on a server
    or in CI. Imported on first use, so a run without a scatter never pays for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pyplot():
    """matplotlib's pyplot on the Agg backend, for modules that draw figures of their own
    (:mod:`aeexp.evaluation.sweep_pictures`); imported on first use, as for the scatter."""
    return _pyplot()


def code_scatter(codes: torch.Tensor, labels: torch.Tensor, title: str) -> Figure:
    """Codes as a scatter plot coloured by class, like the first seed's 784-128-64-32-2 figure
    and the second seed's 2-D latent plot: 2-D codes as they are, wider codes projected on
    their first two principal components. Up to 20 classes get a colour each (tab10, tab20)
    and a legend; more get a colour scale. The caller saves or renders the figure, then closes it."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    codes = codes.detach().double().flatten(1).cpu()
    if codes.shape[1] == 2:
        points, names = codes, ("z[0]", "z[1]")
    else:
        centred = codes - codes.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        points, names = centred @ v[:2].T, ("PC 1 of the codes", "PC 2 of the codes")
    points = points.numpy()
    classes = labels.detach().cpu().numpy()
    num_classes = int(classes.max()) + 1 if len(classes) else 1
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    if num_classes <= 20:
        # A fixed palette: class k has the same colour in every figure, whatever classes it shows.
        palette = 10 if num_classes <= 10 else 20
        cmap = plt.get_cmap(f"tab{palette}")
        axes.scatter(points[:, 0], points[:, 1], c=classes, s=3, alpha=0.7, cmap=cmap, vmin=-0.5,
                     vmax=palette - 0.5)
        handles = [Line2D([], [], linestyle="", marker="o", markersize=5, color=cmap(k), label=str(k))
                   for k in sorted({int(c) for c in classes})]
        # beside the plot: never over the points, and no search for the emptiest corner over every point
        axes.legend(handles=handles, title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                    ncol=1 if num_classes <= 10 else 2)
    else:
        scatter = axes.scatter(points[:, 0], points[:, 1], c=classes, s=3, alpha=0.7, cmap="viridis",
                               vmin=0, vmax=num_classes - 1)
        figure.colorbar(scatter, ax=axes, label="class")
    axes.set_xlabel(names[0])
    axes.set_ylabel(names[1])
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def figure_image(figure: Figure) -> torch.Tensor:
    """A matplotlib figure rendered as an RGB image tensor (3, H, W) in [0, 1], for the
    pictures that go where tensors go (TensorBoard's add_image, save_image); closes the figure."""
    import numpy as np

    try:
        figure.canvas.draw()
        rgba = torch.from_numpy(np.asarray(figure.canvas.buffer_rgba()).copy())
    finally:
        _pyplot().close(figure)
    return rgba[..., :3].permute(2, 0, 1).float() / 255.0


def is_image_batch(x: torch.Tensor) -> bool:
    """Images (N, C, H, W) can be drawn as pictures; vectors (N, D) cannot."""
    return x.dim() == 4


IMAGE_ONLY_NOTE = ("vectors: the image-only pictures (reconstructions, dictionary atoms, denoising) are skipped; "
                   "codes.png and the code scatter are drawn")


@torch.no_grad()
def training_pictures(model: torch.nn.Module, fixed_batch: torch.Tensor, code_batch: torch.Tensor,
                      noise=None, validation_codes=None) -> dict[str, torch.Tensor]:
    """The panels a training run shows every ``trainer.image_every`` epochs (eval mode):
    ``reconstructions`` of ``fixed_batch``, the ``codes`` of ``code_batch``, the decoder's
    ``dictionary``, with noise on ``denoising`` (noisy / denoised / clean rows), and with a
    2-D code ``latent_scatter`` of ``validation_codes()`` (codes and labels, computed only then).
    Vectors (N, D) get only the codes and the scatter: the other panels are pictures of images."""
    model.eval()
    if not is_image_batch(fixed_batch):
        _, codes = model(code_batch)
        pictures = {"codes": code_image(codes)}
    else:
        x_hat, _ = model(fixed_batch)
        _, codes = model(code_batch)
        pictures = {
            "reconstructions": reconstruction_rows(fixed_batch, x_hat),
            "codes": code_image(codes),
            "dictionary": dictionary_grid(model, tuple(codes.shape[1:])),
        }
    if noise is not None and noise.active and is_image_batch(fixed_batch):
        noisy = noise(fixed_batch, noise.val_generator(fixed_batch.device))
        pictures["denoising"] = reconstruction_rows(noisy, model(noisy)[0], fixed_batch)
    if codes[0].numel() == 2 and validation_codes is not None:
        val_codes, val_labels = validation_codes()
        pictures["latent_scatter"] = figure_image(
            code_scatter(val_codes, val_labels, f"validation codes ({len(val_codes)} samples)"))
    return pictures
