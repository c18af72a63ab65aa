"""The evaluation's pictures, as PNG files in ``<run>/eval/`` and images in TensorBoard.

They reuse the trainer's panels (:mod:`aeexp.pictures`) on the test split, and add
what only evaluation has: the PCA reconstruction beside the model's, the codes sorted by
class, denoising triplets per noise level, and a scatter of the codes coloured by class.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

from aeexp.data.images import to_float  # noqa: E402
from aeexp.evaluation.denoising import noise_at  # noqa: E402
from aeexp.pictures import code_image, dictionary_grid, reconstruction_rows  # noqa: E402


def latent_scatter(codes: torch.Tensor, labels: torch.Tensor, title: str) -> plt.Figure:
    """2-D codes as they are; wider codes projected on their first two principal components."""
    codes = codes.double()
    if codes.shape[1] == 2:
        points, axes = codes, ("z1", "z2")
    else:
        centred = codes - codes.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        points, axes = centred @ v[:2].T, ("PC 1 of the codes", "PC 2 of the codes")
    figure, ax = plt.subplots(figsize=(6, 5), dpi=100)
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab10", s=4, alpha=0.7)
    ax.legend(*scatter.legend_elements(), title="class", loc="best", fontsize=7, markerscale=0.8)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


@torch.no_grad()
def write_figures(model: torch.nn.Module, data, test_codes: torch.Tensor, pca_images: torch.Tensor,
                  run_noise, settings, device: torch.device, out_dir: Path, writer: SummaryWriter,
                  step: int) -> list[str]:
    """Write every picture; return the PNG file names."""
    model.eval()
    n = settings.num_images
    x = to_float(data.test_images[:n]).to(device)
    x_hat, _ = model(x)
    pictures = {
        # inputs, the model's reconstructions, PCA's at the same code size
        "reconstructions": reconstruction_rows(x, x_hat, pca_images[:n]),
        "dictionary": dictionary_grid(model, tuple(model.encode(x[:1]).shape[1:])),
    }
    order = data.test_labels[: settings.code_samples].argsort(stable=True)
    pictures["codes"] = code_image(test_codes[: settings.code_samples][order])
    triplets = []
    for level in settings.noise_levels:
        _, noise = noise_at(run_noise, level, settings.seed)
        noisy = noise(x, noise.val_generator(device))
        triplets += [noisy, model(noisy)[0], x]
    if triplets:
        pictures["denoising"] = reconstruction_rows(*triplets)
    written = []
    for name, image in pictures.items():
        save_image(image, out_dir / f"{name}.png")
        writer.add_image(f"eval/{name}", image, step)
        written.append(f"{name}.png")
    m = min(settings.scatter_samples, len(test_codes))
    figure = latent_scatter(test_codes[:m], data.test_labels[:m], f"test codes ({m} samples, {test_codes.shape[1]}-D)")
    figure.savefig(out_dir / "latent_scatter.png")
    writer.add_figure("eval/latent_scatter", figure, step)  # closes the figure
    written.append("latent_scatter.png")
    return written

