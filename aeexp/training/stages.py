"""Training stages: the model, the trainable parameters and the optimizer settings of each.

``trainer.stages`` lists stages run one after another (``[]``: one stage of
``trainer.epochs`` with the model as configured). A stage may tie or untie the decoder's
weights, use only the outer ``depth`` layers of a deep stack, freeze what it does not
train, and override the optimizer and scheduler. The trainer calls :func:`plan_stages` once
and :func:`stage_model` at each stage change (:func:`stage_group` merges a stage's optimizer
and scheduler overrides while planning); everything about models lives in
:mod:`aeexp.models.tied` and :mod:`aeexp.models.layerwise`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.config import ConfigError, check_registry_node, cross_check
from aeexp.models.layerwise import carry_over, keep_depth, set_trainable
from aeexp.models.tied import is_tied, tie, untie, untied_state_dict
from aeexp.models.factory import build_model
from aeexp.registry import OPTIMIZERS, SCHEDULERS, Registry


@dataclass
class Stage:
    """One stage, with its defaults filled in from the rest of the config."""

    index: int  # 0-based; users see index + 1
    name: str
    epochs: int
    tied: Optional[bool]  # None: leave the model as its config builds it
    depth: Optional[int]
    train: list[str]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]

    @property
    def key(self) -> str:
        return f"trainer.stages[{self.index}]"


def plan_stages(cfg: DictConfig) -> list[Stage]:
    """The stages of a validated config, in order."""
    specs = list(cfg.trainer.get("stages") or []) or [OmegaConf.create({})]
    stages = []
    for i, spec in enumerate(specs):
        spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
        stages.append(Stage(
            index=i,
            name=spec.get("name") or f"stage{i + 1}",
            epochs=spec.get("epochs") or int(cfg.trainer.epochs),
            tied=spec.get("tied"),
            depth=spec.get("depth"),
            train=list(spec.get("train") or ["all"]),
            optimizer=stage_group(cfg.optimizer, spec.get("optimizer"), OPTIMIZERS),
            scheduler=stage_group(cfg.scheduler, spec.get("scheduler"), SCHEDULERS),
        ))
    return stages


def stage_group(base: Any, override: Optional[dict[str, Any]], registry: Optional[Registry] = None) -> dict[str, Any]:
    """A group's node with a stage's overrides: merged key by key, or replaced whole when
    the override names another component (``{name: sgd, lr: 0.1}`` must not inherit Adam's
    betas); the keys such an override leaves out come from that component's schema, as they
    would from its YAML file, so ``{name: sgd}`` alone is a whole node."""
    base = OmegaConf.to_container(base, resolve=True) if isinstance(base, DictConfig) else dict(base)
    override = dict(override or {})
    if "name" in override and override["name"] != base.get("name"):
        schema = registry.schema(override["name"]) if registry is not None and override["name"] in registry else None
        if schema is None:
            return override
        return {**OmegaConf.to_container(OmegaConf.structured(schema)), **override}
    return {**base, **override}


def stage_model(
    cfg: DictConfig,
    input_shape: tuple[int, ...],
    stage: Stage,
    previous: Optional[torch.nn.Module] = None,
) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The model of ``stage`` and the parameters it trains (the rest are frozen).

    Built fresh from the config, cut to the stage's depth, given ``previous``'s weights
    where names match (tied weights count as their untied copies, so untying keeps the
    output unchanged), then tied or untied as the stage says. Layers ``previous`` lacks
    keep their fresh initialisation and are what ``train: [new]`` trains.
    """
    model = build_model(cfg, input_shape)
    tied = is_tied(model) if stage.tied is None else stage.tied
    untie(model)
    if stage.depth is not None:
        model = keep_depth(model, stage.depth, f"{stage.key}.depth")
    new = {name for name, _ in model.named_parameters()}
    if previous is not None:
        new = carry_over(untied_state_dict(previous), model, stage.key) & new
    if tied:
        try:
            tie(model)
        except ConfigError as err:
            raise ConfigError(f"{stage.key}.tied" if stage.tied else err.key, err.message) from None
    new &= {name for name, _ in model.named_parameters()}
    params = set_trainable(model, stage.train, new, f"{stage.key}.train")
    return model, params


@cross_check
def check_stages(cfg: dict[str, Any]) -> None:
    """Each stage's optimizer and scheduler, with its overrides, must fit their schemas; a
    depth must exist in an fc model; a shallower stage has no code to sparsify."""
    stages = cfg["trainer"].get("stages") or []
    for i, spec in enumerate(stages):
        key = f"trainer.stages[{i}]"
        for group, registry in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS)):
            _check_override(f"{key}.{group}", cfg[group], spec.get(group), registry)
        depth = spec.get("depth")
        if depth is None:
            continue
        model = cfg["model"]
        if model.get("name") == "fc" and "_target_" not in model:
            blocks = sum(layer.get("repeat", 1) for layer in model.get("encoder") or []) + 1
            if depth > blocks:
                raise ConfigError(f"{key}.depth", f"got {depth}, allowed: 1 to the model's {blocks} encoder Linear layers")
            full = depth == blocks
        else:
            full = False
        if not full and cfg["sparsity"].get("name", "none") != "none":
            raise ConfigError(f"{key}.depth", (
                f"got {depth} with sparsity={cfg['sparsity'].get('name')}: a stage below the full depth has "
                "another code than the one sparsity applies to; allowed: sparsity=none, or depth=null"))


def _check_override(key: str, base: dict, override: Optional[dict], registry: Registry) -> None:
    """The group's node with the stage's overrides gets the same check as the group itself."""
    if not override:
        return
    if "_target_" in base and "name" not in override:
        return  # a user's own class: its constructor checks the values when it is built
    node = OmegaConf.create(stage_group(base, override, registry))
    check_registry_node(key, node, registry)

