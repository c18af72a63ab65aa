"""One Adam (or AdamW) step for every member of a stack: the members' optimizers differ at
most in their learning rate, so their steps are the same elementwise operations on every
member's tensors; run on the (N, ...) stacks they are one set of operations instead of
one per member and tensor (on a CPU that per-operation cost is most of an optimizer step
of a small model).

The operations are those of ``torch.optim.adam._single_tensor_adam`` (the path a lone run
on a CPU takes: no foreach, fused, capturable, amsgrad or maximize), in the same order and
precision, with the learning rate, the one per-member value, entering as an (N, 1, ...)
tensor where Adam uses it as a scalar. ``param.addcdiv_(m, d, value=-step_size)`` is
computed as ``param + (-step_size * m) / d``, the order the kernel itself uses, so each
member's update is its lone optimizer's to float rounding. Each member's optimizer state
(``exp_avg``, ``exp_avg_sq``, ``step``) lives in the stacks as views, as its parameters do
(:mod:`aeexp.stacked.weights`): its ``state_dict`` and checkpoints are what its own steps
would have made, and a member can go back to stepping alone at any time.
"""

from __future__ import annotations

import torch

from aeexp.stacked.weights import StackedWeights

_PLAIN = {"amsgrad": False, "maximize": False, "foreach": None, "fused": None, "capturable": False,
          "differentiable": False}
_MOMENTS = ("exp_avg", "exp_avg_sq")


def _stackable(optimizers: list[torch.optim.Optimizer], weights: StackedWeights) -> bool:
    """Adam/AdamW over exactly the stacked parameters, one group each, settings equal but the
    learning rate, states all fresh or all at the same step."""
    if not optimizers or any(type(o) not in (torch.optim.Adam, torch.optim.AdamW) or len(o.param_groups) != 1
                             for o in optimizers) or len({type(o) for o in optimizers}) != 1:
        return False
    groups = [o.param_groups[0] for o in optimizers]
    if any(not isinstance(g["lr"], float) or any(g.get(k, v) != v for k, v in _PLAIN.items()) for g in groups):
        return False
    settings = {repr(sorted((k, v) for k, v in g.items() if k not in ("params", "lr"))) for g in groups}
    if len(settings) != 1:
        return False
    for g, member in zip(groups, weights._member_params):
        if [id(p) for p in g["params"]] != [id(p) for p in member.values()]:
            return False
    states = [o.state.get(p) for o, g in zip(optimizers, groups) for p in g["params"]]
    if all(not s for s in states):
        return True
    return all(s and set(s) == {"step", *_MOMENTS} for s in states) and len({float(s["step"]) for s in states}) == 1


class StackedAdam:
    """``step()``: every member's ``optimizer.step()`` at once (see the module's docstring).
    ``StackedAdam.build(...)`` is None where the optimizers do not allow it."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], weights: StackedWeights):
        self.optimizers = list(optimizers)
        self.weights = weights
        self.group = dict(optimizers[0].param_groups[0])
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for name, big in weights.params.items():
            members = [m[name] for m in weights._member_params]
            owned = [o.state[p] for o, p in zip(optimizers, members)]
            if not owned[0]:  # Adam's own lazy initialisation, for every member at once
                for state, p in zip(owned, members):
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            stacks = {}
            for key in (*_MOMENTS, "step"):
                stacks[key] = torch.stack([s[key].detach() for s in owned])
                for i, state in enumerate(owned):
                    state[key].data = stacks[key][i]  # the member's state tensor now lives in the stack
            self.state[name] = stacks
        for optimizer in self.optimizers:
            if not getattr(optimizer, "_aeexp_own_copies", False):
                optimizer.register_state_dict_post_hook(_own_state_copies)
                optimizer._aeexp_own_copies = True

    @classmethod
    def build(cls, optimizers: list[torch.optim.Optimizer], weights: StackedWeights) -> "StackedAdam | None":
        return cls(optimizers, weights) if _stackable(optimizers, weights) else None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.group["betas"]
        eps, weight_decay = self.group["eps"], self.group["weight_decay"]
        decoupled = self.group.get("decoupled_weight_decay", isinstance(self.optimizers[0], torch.optim.AdamW))
        lrs = [o.param_groups[0]["lr"] for o in self.optimizers]
        per_step: dict[tuple, torch.Tensor] = {}  # each per-member factor made once per step (one copy to a GPU)

        def members_factor(key: tuple, values: list[float], like: torch.Tensor) -> torch.Tensor:
            if key not in per_step:
                per_step[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
            return per_step[key].view((len(values),) + (1,) * (like.dim() - 1))

        for name, param in self.weights.params.items():
            state = self.state[name]
            exp_avg, exp_avg_sq, steps = state["exp_avg"], state["exp_avg_sq"], state["step"]
            grad = param.grad
            if grad is None:  # Adam leaves a parameter without a gradient alone
                continue
            steps += 1
            if weight_decay != 0:
                if decoupled:
                    param.mul_(members_factor(("decay",), [1 - lr * weight_decay for lr in lrs], param))
                else:
                    grad = grad.add(param, alpha=weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = float(steps[0])
            bias_correction1 = 1 - beta1**step
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            neg_step_size = members_factor(("step", step), [-(lr / bias_correction1) for lr in lrs], param)
            param.add_(torch.mul(neg_step_size, exp_avg).div_(denom))
        for optimizer in self.optimizers:
            optimizer._opt_called = True  # what its own step() tells an LR scheduler


def _own_state_copies(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """A member's optimizer state dict holds copies of its own tensors, not views into the
    stack (saved as they are, they would carry every member's state into each checkpoint)."""
    state_dict["state"] = {k: {name: v.clone() if isinstance(v, torch.Tensor) else v for name, v in s.items()}
                           for k, s in state_dict["state"].items()}
    return state_dict
