"""The one-layer sparse autoencoder of SAE work (``model=sae``), its conventions as options.

    x  ->  x * s  ->  (- b_dec if pre_bias)  ->  W_enc . + b_enc  ->  code_activation  = code
    z = bottleneck(code)      (the sparsity module: top-k, batch top-k, L1, ...)
    x_hat = (W_dec z + b_dec) / s

``s`` is the input scale (1 unless ``normalize_input``), so ``x_hat`` and every reported
error are in the data's own units. Images are flattened on the way in and reshaped on the
way out, as ``model=fc`` does; vectors (``input_shape`` (D,)) pass as they are.

Column ``j`` of ``W_dec`` (``decoder.linear.weight[:, j]``, D values) is latent ``j``'s
direction in input space; :meth:`SparseAutoencoder.dictionary` returns them as rows.
``W_enc`` starts as ``W_dec`` transposed (Gao et al. 2024; SAELens' ``init_encoder_as_decoder_transpose``),
``b_enc`` at 0.

The options and whom they follow (README, "Sparse autoencoders"):

- ``normalize_input``: ``s`` is set once, at the start of a fresh run, so that the training
  inputs' mean squared norm becomes the input width D (``s = sqrt(D / mean ||x||^2)``). It is
  a buffer (``decoder.input_scale``), so checkpoints carry it and evaluation applies it.
  SAELens scales the *mean norm* to sqrt(D) instead; the two differ by how spread the norms are.
- ``pre_bias``: the encoder sees ``x - b_dec`` (Bricken et al. 2023, Gao et al. 2024, SAELens
  ``apply_b_dec_to_input``). ``b_dec_init``: ``zeros``, or the training sample's ``mean`` or
  ``geometric_median`` (Weiszfeld's iterations, as SAELens and OpenAI initialise it), in
  normalised units.
- ``unit_norm_decoder``: every column of ``W_dec`` has norm 1 at initialisation and after each
  optimizer step, and before the step the gradient's component along each column is removed
  (SAELens ``remove_gradient_parallel_to_decoder_directions`` / ``set_decoder_norm_to_unit_norm``,
  OpenAI's ``unit_norm_decoder_grad_adjustment_``).

The data-dependent parts are methods the trainer calls through
:mod:`aeexp.training.model_hooks`: :meth:`~SparseAutoencoder.initialize_from_data` once at a
fresh start (never on resume: the checkpoint holds ``s`` and ``b_dec``),
:meth:`~SparseAutoencoder.before_optimizer_step` and :meth:`~SparseAutoencoder.after_optimizer_step`
around each step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from aeexp.config import require, require_choice
from aeexp.models.autoencoder import Autoencoder
from aeexp.models.layers import check_activation, make_activation
from aeexp.registry import MODELS

log = logging.getLogger(__name__)

B_DEC_INITS = ("zeros", "mean", "geometric_median")


@dataclass
class SAEModelConfig:
    """One Linear to ``latent_dim`` with ``code_activation`` (``none``: the sparsity method sees
    the raw pre-activations, as top-k SAEs want; ``relu`` for L1 SAEs), one Linear back.
    Every option off is a one-layer linear autoencoder whose encoder starts as the decoder's
    transpose. ``init_sample_size``: training samples the data-dependent initialisation reads."""

    name: str = "sae"
    latent_dim: int = 1024
    code_activation: str = "none"
    pre_bias: bool = False
    b_dec_init: str = "zeros"
    unit_norm_decoder: bool = False
    normalize_input: bool = False
    init_sample_size: int = 4096

    def __post_init__(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "an integer >= 1")
        check_activation("code_activation", self.code_activation)
        require_choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        require(self.init_sample_size >= 1, "init_sample_size", self.init_sample_size, "an integer >= 1")


class SAEDecoder(nn.Module):
    """``x_hat = (W_dec z + b_dec) / input_scale``, reshaped to the input's shape.

    ``linear.weight`` is W_dec (D x latents: one column per latent), ``linear.bias`` is b_dec;
    the buffer ``input_scale`` is s (1 until :meth:`SparseAutoencoder.initialize_from_data`)."""

    def __init__(self, latent_dim: int, input_shape: tuple[int, ...]):
        super().__init__()
        self.linear = nn.Linear(latent_dim, math.prod(input_shape))
        self.unflatten = nn.Unflatten(1, tuple(input_shape))
        self.register_buffer("input_scale", torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.unflatten(self.linear(z.reshape(len(z), -1)) / self.input_scale)


class SAEEncoder(nn.Module):
    """``code = activation(W_enc (x s - b_dec) + b_enc)`` (``- b_dec`` only with ``pre_bias``).

    b_dec and s belong to the decoder, which this module reads but does not register (as
    :class:`~aeexp.models.tied.TiedLinear` keeps its source), so each is stored and trained once."""

    def __init__(self, in_features: int, latent_dim: int, code_activation: str, pre_bias: bool,
                 decoder: SAEDecoder):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_features, latent_dim)
        self.activation = make_activation(code_activation)
        self.pre_bias = pre_bias
        self.__dict__["decoder"] = decoder  # not a submodule: b_dec and s are registered once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x) * self.decoder.input_scale
        if self.pre_bias:
            x = x - self.decoder.linear.bias
        return self.activation(self.linear(x))

    def extra_repr(self) -> str:
        return f"pre_bias={self.pre_bias}"


class SparseAutoencoder(Autoencoder):
    """An :class:`Autoencoder` with the SAE hooks (see the module docstring)."""

    def __init__(self, input_shape: tuple[int, ...], bottleneck: nn.Module, latent_dim: int,
                 code_activation: str, pre_bias: bool, b_dec_init: str, unit_norm_decoder: bool,
                 normalize_input: bool, init_sample_size: int):
        in_features = math.prod(input_shape)
        decoder = SAEDecoder(latent_dim, input_shape)
        encoder = SAEEncoder(in_features, latent_dim, code_activation, pre_bias, decoder)
        super().__init__(encoder, bottleneck, decoder)
        self.input_shape = tuple(input_shape)
        self.b_dec_init, self.unit_norm_decoder = b_dec_init, unit_norm_decoder
        self.normalize_input, self.init_sample_size = normalize_input, init_sample_size
        with torch.no_grad():
            nn.init.zeros_(decoder.linear.bias)
            if unit_norm_decoder:
                self.after_optimizer_step()
            encoder.linear.weight.copy_(decoder.linear.weight.t())
            nn.init.zeros_(encoder.linear.bias)

    @property
    def W_dec(self) -> nn.Parameter:  # noqa: N802  (the name SAE papers and libraries use)
        return self.decoder.linear.weight

    def dictionary(self) -> torch.Tensor:
        """The latents' decoder directions as rows, (latent_dim, D), detached; each row is
        a direction in input space (the input scale is one number, so it changes no direction)."""
        return self.W_dec.detach().t()

    # ------------------------------------------------------------- trainer hooks
    @torch.no_grad()
    def initialize_from_data(self, sample: torch.Tensor) -> None:
        """Set ``s`` (``normalize_input``) and then ``b_dec`` (``b_dec_init``) from a sample of
        training inputs (N, *input_shape), in float64. Call once at the start of a fresh run,
        never on resume. With neither option it changes nothing."""
        flat = sample.detach().reshape(len(sample), -1).to(self.decoder.input_scale.device, torch.float64)
        if self.normalize_input:
            self.decoder.input_scale.fill_(input_scale(flat))
            log.info("sae: input scale %.4g from %d training inputs (mean squared norm -> %d)",
                     float(self.decoder.input_scale), len(flat), flat.shape[1])
        if self.b_dec_init == "zeros" or not len(flat):
            return
        flat = flat * self.decoder.input_scale.double()
        centre = flat.mean(0) if self.b_dec_init == "mean" else geometric_median(flat)
        self.decoder.linear.bias.copy_(centre)
        log.info("sae: b_dec = %s of %d training inputs (norm %.4g), input scale %.4g", self.b_dec_init, len(flat),
                 float(centre.norm()), float(self.decoder.input_scale))

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """``unit_norm_decoder``: remove from W_dec's gradient its component along each column.

        Linear in the gradient, so it may run on a GradScaler's scaled gradients (before or
        after ``unscale_``) and gives the same step."""
        grad = self.W_dec.grad
        if not self.unit_norm_decoder or grad is None:
            return
        directions = self.W_dec / column_norms(self.W_dec)
        grad.sub_(directions * (grad * directions).sum(0, keepdim=True))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """``unit_norm_decoder``: every column of W_dec back to norm 1."""
        if self.unit_norm_decoder:
            self.W_dec.div_(column_norms(self.W_dec))


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """Each column's Euclidean norm, (1, columns), kept away from zero."""
    return weight.norm(dim=0, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny ** 0.5)


def input_scale(flat: torch.Tensor) -> float:
    """``s`` with mean ||s x||^2 = D over the rows of ``flat`` (N, D); 1 for an all-zero sample."""
    mean_square_norm = float(flat.double().pow(2).sum(1).mean())
    return math.sqrt(flat.shape[1] / mean_square_norm) if mean_square_norm > 0 else 1.0


def geometric_median(points: torch.Tensor, iterations: int = 200, tol: float = 1e-7,
                     eps: float = 1e-8) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances to the rows of ``points`` (N, D).

    Weiszfeld's iterations from the mean: each step is the average of the points weighted by
    1 / their distance to the current guess (the distance floored at ``eps``, the smoothed
    variant of the ``geom_median`` package SAELens uses, so a guess on a data point does not
    divide by zero); stops when a step moves less than ``tol`` x (1 + |guess|)."""
    points = points.double()
    guess = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - guess).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        moved = float((new - guess).norm())
        guess = new
        if moved <= tol * (1.0 + float(guess.norm())):
            break
    return guess


@MODELS.register("sae", schema=SAEModelConfig)
def build_sae(
    *,
    input_shape: tuple[int, ...],
    bottleneck: nn.Module,
    latent_dim: int = SAEModelConfig.latent_dim,
    code_activation: str = SAEModelConfig.code_activation,
    pre_bias: bool = SAEModelConfig.pre_bias,
    b_dec_init: str = SAEModelConfig.b_dec_init,
    unit_norm_decoder: bool = SAEModelConfig.unit_norm_decoder,
    normalize_input: bool = SAEModelConfig.normalize_input,
    init_sample_size: int = SAEModelConfig.init_sample_size,
) -> SparseAutoencoder:
    """Through ``MODELS`` every key comes from a node checked against :class:`SAEModelConfig`."""
    return SparseAutoencoder(tuple(input_shape), bottleneck, latent_dim, code_activation, pre_bias, b_dec_init,
                             unit_norm_decoder, normalize_input, init_sample_size)
