"""N members' weights as one stacked model: (N, ...) tensors that share storage with each
member's own parameters, and one vmapped forward pass over them.

Each member keeps its own ``nn.Module`` (built by the model factory, checkpointed and
evaluated as a lone run's) and its own optimizer over those parameters. Only the storage
is shared: member ``i``'s parameter *is* slice ``i`` of the stacked tensor, so an optimizer
step on the member changes what the stacked forward sees, and the stacked backward's
gradient slice ``i`` *is* the member's ``.grad``. Every member's update is thus the one its
own optimizer computes (Adam, AdamW, SGD with their per-member learning rates and states,
exactly as alone); only the forward and backward matmuls are batched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap


def _own_copies(module: nn.Module, state: dict, prefix: str, metadata: dict) -> None:
    """A member's state dict holds copies of its own tensors: saved as they are, views into
    the stack would carry every member's weights into each member's checkpoint."""
    for key in [k for k in state if k.startswith(prefix)]:
        state[key] = state[key].clone()


class _Parts(nn.Module):
    """``forward`` = the model's ``forward_parts`` (what functional_call can call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.forward_parts(x)


ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Identity)


def _plain_fc(model: nn.Module) -> bool:
    """A plain fully-connected Autoencoder (``model=fc``, untied): Flatten, Linear layers and
    elementwise activations, an identity bottleneck, Unflatten; its stacked forward is a few
    batched matrix products (baddbmm), cheaper than vmap's product-then-add."""
    from aeexp.models.autoencoder import Autoencoder
    from aeexp.sparsity.base import Sparsity

    if type(model) is not Autoencoder or type(model.bottleneck).forward is not Sparsity.forward:
        return False
    encoder, decoder = model.encoder, model.decoder
    if not (isinstance(encoder, nn.Sequential) and isinstance(decoder, nn.Sequential) and len(encoder)
            and len(decoder) and type(encoder[0]) is nn.Flatten and (encoder[0].start_dim, encoder[0].end_dim) == (1, -1)
            and type(decoder[-1]) is nn.Unflatten and decoder[-1].dim == 1):
        return False
    inner = [m for part in (encoder[1:], decoder[:-1]) for m in part.modules() if m is not part]
    return all(type(m) in (nn.Sequential, nn.Linear, *ELEMENTWISE) for m in inner)


class StackedWeights:
    """The parameters and buffers of ``models`` (same architecture) stacked along a new first
    dimension; each member's tensors become views into the stack."""

    def __init__(self, models: list[nn.Module]):
        self.models = list(models)
        self.template = _Parts(copy.deepcopy(models[0])).train()  # the structure functional_call runs
        self.params = self._stack([dict(m.named_parameters()) for m in self.models], grad=True)
        self.buffers = self._stack([dict(m.named_buffers()) for m in self.models], grad=False)
        self._member_params = [{f"model.{n}": p for n, p in m.named_parameters()} for m in self.models]
        for model in self.models:
            if not getattr(model, "_aeexp_own_copies", False):
                model.register_state_dict_post_hook(_own_copies)
                model._aeexp_own_copies = True
        self._forward = vmap(self._one, in_dims=(0, 0, 0))
        self._plain = _plain_fc(models[0])

    @staticmethod
    def _stack(per_member: list[dict[str, torch.Tensor]], grad: bool) -> dict[str, torch.Tensor]:
        stacked = {}
        for name in per_member[0]:
            tensors = [member[name] for member in per_member]
            big = torch.stack([t.detach() for t in tensors])
            for i, tensor in enumerate(tensors):
                tensor.data = big[i]  # the member's tensor now lives in the stack (same object, same optimizer key)
            stacked[f"model.{name}"] = big.requires_grad_(grad)
        return stacked

    def _one(self, params, buffers, x):
        return functional_call(self.template, (params, buffers), (x,))

    def forward_parts(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``inputs`` (N, B, ...) -> ``(x_hat, z, code)``, each (N, B, ...): member i's forward
        on its own batch ``inputs[i]``."""
        if self._plain:
            model = self.template.model
            code = self._sequence(model.encoder[1:], "model.encoder.", 1, inputs.flatten(2))
            x_hat = self._sequence(model.decoder[:-1], "model.decoder.", 0, code)
            return x_hat.unflatten(2, model.decoder[-1].unflattened_size), code, code
        return self._forward(self.params, self.buffers, inputs)

    def _sequence(self, modules: nn.Sequential, prefix: str, offset: int, x: torch.Tensor) -> torch.Tensor:
        """A plain fc stack on (N, B, features): each Linear one batched product with its bias."""
        for index, module in enumerate(modules, start=offset):
            name = f"{prefix}{index}."
            if isinstance(module, nn.Sequential):
                x = self._sequence(module, name, 0, x)
            elif isinstance(module, nn.Linear):
                weight, bias = self.params[f"{name}weight"].transpose(1, 2), self.params.get(f"{name}bias")
                x = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
            else:
                x = module(x)  # elementwise
        return x

    def zero_grad(self) -> None:
        for big in self.params.values():
            big.grad = None

    def hand_out_grads(self, members: list[int]) -> None:
        """Each listed member's ``.grad``: its slice of the stacked gradient (a view, so what
        the member's hooks and gradient clipping do in place lands in the member's slice)."""
        for name, big in self.params.items():
            for i in members:
                self._member_params[i][name].grad = None if big.grad is None else big.grad[i]
