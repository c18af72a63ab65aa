"""Which sweep jobs train stacked, and why the others do not.

Two jobs stack when their configs differ only in :data:`STACKABLE` keys: values that change
no tensor shape and that each member keeps to itself (its own optimizer, scheduler, penalty
module, noise, random streams, epoch count). The set is written out, and kept conservative:
a key that is not in it splits the jobs, and each job must also be of a kind the stacked step
supports (:func:`unsupported_reason`). Every job that does not stack runs alone through the
normal path, with one log line saying why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

STACKABLE = frozenset({
    "seed", "tags", "optimized_metric",
    # each member has its own optimizer (same kind: optimizer.name is not here)
    "optimizer.lr", "optimizer.weight_decay", "optimizer.betas", "optimizer.eps", "optimizer.momentum",
    "optimizer.nesterov",
    # each member has its own scheduler
    "scheduler.factor", "scheduler.patience", "scheduler.stop_lr", "scheduler.min_lr",
    # each member has its own sparsity module and noise (same kinds)
    "sparsity.weight", "sparsity.rho", "noise.std", "noise.fraction", "noise.value", "noise.clamp",
    # each member stops on its own
    "trainer.epochs", "trainer.divergence_factor", "trainer.grad_clip", "trainer.image_every",
    "trainer.log_every_n_steps", "trainer.progress",
})

MODELS = ("fc", "sae")  # model=fc, mlp, deep_fc (name fc) and model=sae
SPARSITY = ("none", "l1", "kl")  # the ones whose forward is the identity: top-k and lifetime fall back
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "plateau", "cosine")
DATASETS = ("mnist", "fashion_mnist", "kmnist", "synthetic", "sparse_features")  # held in memory


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values (lists as tuples), interpolations left as written."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: "{}"}
    if isinstance(node, list):
        return {prefix[:-1]: repr(node)}
    return {prefix[:-1]: node}


def _choice(cfg: DictConfig, group: str) -> str:
    node = cfg.get(group)
    if node is None:
        return "null"
    return "_target_" if "_target_" in node else str(node.get("name"))


def unsupported_reason(cfg: DictConfig) -> str | None:
    """Why a job cannot train stacked at all (None: it can)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return f"under torchrun (WORLD_SIZE={world}) each job is one run across the processes"
    for group, allowed in (("model", MODELS), ("sparsity", SPARSITY), ("optimizer", OPTIMIZERS),
                           ("scheduler", SCHEDULERS), ("dataset", DATASETS)):
        choice = _choice(cfg, group)
        if choice not in allowed:
            return f"{group}={choice} not supported stacked (stacked: {', '.join(allowed)})"
    model = cfg.model
    if any(float(layer.get("dropout", 0) or 0) > 0 for part in ("encoder", "decoder") for layer in model.get(part) or []):
        return "model dropout > 0 not supported stacked (the members' masks would come from one random stream)"
    trainer, device = cfg.trainer, cfg.device
    if trainer.get("stages"):
        return "trainer.stages set (stacked runs train one stage)"
    if device.get("precision", "fp32") != "fp32":
        return f"device.precision={device.precision} not supported stacked (stacked: fp32)"
    if device.get("compile"):
        return "device.compile=true not supported stacked"
    return None


@dataclass
class Plan:
    """Job positions: ``groups`` train stacked (two or more each), ``alone`` maps the others
    to the reason they run alone."""

    groups: list[list[int]] = field(default_factory=list)
    alone: dict[int, str] = field(default_factory=dict)


def plan_groups(configs: list[DictConfig], max_members: int) -> Plan:
    """Group the jobs whose configs differ only in :data:`STACKABLE` keys, in job order,
    ``max_members`` at most per group."""
    plan = Plan()
    flat = [flatten(cfg) for cfg in configs]
    keys: dict[tuple, list[int]] = {}
    for position, cfg in enumerate(configs):
        reason = unsupported_reason(cfg)
        if reason is not None:
            plan.alone[position] = reason
            continue
        key = tuple(sorted((k, repr(v)) for k, v in flat[position].items() if k not in STACKABLE))
        keys.setdefault(key, []).append(position)
    stackable = [p for members in keys.values() for p in members]
    for members in keys.values():
        if len(members) == 1:
            plan.alone[members[0]] = _why_alone(members[0], flat, [p for p in stackable if p != members[0]])
            continue
        for begin in range(0, len(members), max_members):
            chunk = members[begin:begin + max_members]
            if len(chunk) == 1:
                plan.alone[chunk[0]] = f"the group it belongs to has more than max_members={max_members} jobs"
            else:
                plan.groups.append(chunk)
    return plan


def _why_alone(position: int, flat: list[dict[str, Any]], others: list[int]) -> str:
    """The non-stackable keys in which this job differs from the job most like it."""
    if not others:
        return "no other job of this sweep can stack with it"
    mine = flat[position]

    def differing(other: int) -> list[str]:
        theirs = flat[other]
        return sorted(k for k in mine.keys() | theirs.keys() if k not in STACKABLE and mine.get(k) != theirs.get(k))

    keys = min((differing(o) for o in others), key=len)
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"{shown} differ{'s' if len(keys) == 1 else ''} from every other job's"
