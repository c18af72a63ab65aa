"""From a config to a model: ``build_model`` and what a built model must be and weigh.

One place builds every model (training, its stages, evaluation, ``aeexp.load_run``): the
sparsity module first (the bottleneck), then the model around it, sized by the input shape.
A user's ``_target_`` class is checked here for what the trainer will call, and any model
is counted (on the ``meta`` device where the builder allows, so nothing is allocated)
against ``trainer.max_parameters``; every refusal is one ConfigError naming the key.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.config import ConfigError, cross_check
from aeexp.registry import MODELS, SPARSITY, Registry

def build_model(cfg: DictConfig, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The model a config describes, sized for images of ``input_shape`` (C, H, W).

    A registered model is first built on the ``meta`` device (no memory) and refused above
    ``trainer.max_parameters``; a ``_target_`` class must give what the trainer uses (an
    :class:`~aeexp.models.Autoencoder`, a :class:`~aeexp.sparsity.Sparsity`, or the same
    interface: docs/guide.md, section 3), checked on the built object; the sparsity's optional
    ``bind`` is called last. Each refusal is one ConfigError naming the key.
    """
    input_shape = tuple(input_shape)
    limit = _max_parameters(cfg)
    estimate = estimate_parameters(cfg.model, cfg.sparsity, input_shape)
    if estimate is not None:
        refuse_large_model(estimate, limit, input_shape)
    bottleneck = build_component("sparsity", SPARSITY, cfg.sparsity)
    check_sparsity(bottleneck, cfg.sparsity)
    model = build_component("model", MODELS, cfg.model, input_shape=input_shape, bottleneck=bottleneck)
    check_autoencoder(model, cfg.model)
    if estimate is None:
        refuse_large_model(count_parameters(model), limit, input_shape)
    bind_sparsity(bottleneck, model, cfg.sparsity, input_shape, cfg.trainer.batch_size)
    return model


# ---------------------------------------------------- what a built model must be and weigh
MODEL_METHODS = ("forward_parts", "encode", "decode")
MODEL_MODULES = ("encoder", "bottleneck", "decoder")
SPARSITY_METHODS = ("forward", "penalty", "auxiliary")
MODEL_CONTEXT = ("input_shape", "bottleneck")
# What aeexp passes a group's builder besides the node's keys (see Registry.build's callers).
BUILD_CONTEXT = {"model": MODEL_CONTEXT, "sparsity": (), "noise": (), "dataset": (), "optimizer": ("params",),
                 "scheduler": ("optimizer", "epochs")}
# Where the whole interface of a model and a sparsity method is written; the messages point there.
INTERFACE_DOC = "docs/guide.md, section 3"
PYTHONPATH_HINT = ("is its module on PYTHONPATH? Run from the folder that holds it, or set "
                   "PYTHONPATH=/path/to/that/folder before python train.py / evaluate.py")


def _max_parameters(cfg: Any) -> Optional[int]:
    from aeexp.config import DEFAULT_MAX_PARAMETERS

    trainer = cfg.get("trainer") or {}
    return trainer.get("max_parameters", DEFAULT_MAX_PARAMETERS) if hasattr(trainer, "get") else DEFAULT_MAX_PARAMETERS


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) weights count once


def refuse_large_model(parameters: int, limit: Optional[int], input_shape: tuple[int, ...]) -> None:
    """ConfigError when ``parameters`` exceeds ``limit`` (None: no limit)."""
    if limit is None or parameters <= limit:
        return
    gigabytes = parameters * 16 / 1e9  # fp32 weights, gradients and Adam's two moments
    shape = "x".join(map(str, input_shape)) + (" images" if len(input_shape) == 3 else "-d vectors")
    raise ConfigError("model", (
        f"{parameters:,} parameters on {shape} (about {gigabytes:.1f} GB to train: fp32 weights, gradients "
        f"and Adam's moments), above the limit trainer.max_parameters={limit:,}; allowed: a smaller model "
        f"(model.latent_dim, the layer sizes), or raise the limit with ++trainer.max_parameters={parameters} "
        "(null: no limit)"))


def estimate_parameters(model_node: Any, sparsity_node: Any, input_shape: tuple[int, ...]) -> Optional[int]:
    """Parameters of a registered model, built on the ``meta`` device (no memory is used);
    None for a ``_target_`` model (its constructor is the user's code, called once, for real).

    The build raises the builders' own ConfigErrors (a conv stack too deep for the image), so
    these come before any data is read when the input shape is known from the config.
    """
    model_node, sparsity_node = _plain(model_node), _plain(sparsity_node)
    if not isinstance(model_node, dict) or "_target_" in model_node or model_node.get("name") not in MODELS:
        return None
    registered = isinstance(sparsity_node, dict) and "_target_" not in sparsity_node \
        and sparsity_node.get("name") in SPARSITY
    try:
        with torch.device("meta"):
            bottleneck = SPARSITY.build(sparsity_node) if registered else torch.nn.Identity()
            model = MODELS.build(model_node, input_shape=tuple(input_shape), bottleneck=bottleneck)
    except ConfigError:
        raise
    except Exception:  # a builder that cannot run on meta: the real build says what is wrong
        return None
    return count_parameters(model)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def locate_target(key: str, target: Any) -> Any:
    """The object a ``_target_`` names, imported; ConfigError with a PYTHONPATH hint if it cannot be."""
    from hydra._internal.utils import _locate

    if not isinstance(target, str) or not target.strip():
        raise ConfigError(key, f"got {target!r}, allowed: a dotted path to a class or function (mypackage.MyModel)")
    try:
        return _locate(target)
    except ImportError as err:
        reason = " ".join(line.strip() for line in str(err).splitlines()[1:2]) or type(err).__name__
        raise ConfigError(key, f"cannot import {target!r} ({reason}): {PYTHONPATH_HINT}") from None


def _missing(obj: Any, methods: tuple[str, ...], modules: tuple[str, ...] = ()) -> list[str]:
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    return missing + [m for m in modules if not isinstance(getattr(obj, m, None), torch.nn.Module)]


def check_target_signature(key: str, target: Any, node: dict, context: tuple[str, ...]) -> None:
    """The node's keys (and the context aeexp adds) must fit the target's parameters."""
    import inspect

    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    # Registry.build drops ``name`` beside a ``_target_``; ``_args_``, ``_partial_``... are Hydra's.
    kwargs = {k: None for k in node if k != "name" and not (k.startswith("_") and k.endswith("_"))}
    kwargs.update({k: None for k in context})
    args = list(node.get("_args_") or [])
    try:
        (signature.bind_partial if node.get("_partial_") else signature.bind)(*args, **kwargs)
    except TypeError as err:
        given = ", ".join(k for k in kwargs if k not in context) or "none"
        star = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
        names = ", ".join(star.get(p.kind, "") + name for name, p in signature.parameters.items())
        raise ConfigError(key, (
            f"{node['_target_']}({names}) does not take these arguments ({err}); it gets the node's keys "
            f"({given}) as keyword arguments" + (f", and {', '.join(context)} from aeexp" if context else "")
        )) from None


def check_target_class(group: str, target: Any) -> None:
    """A ``_target_`` class for the model or the sparsity must have the methods the trainer
    calls; checked on the class, before any data (a function is checked once it has built)."""
    if not isinstance(target, type):
        return
    from aeexp.models.autoencoder import Autoencoder
    from aeexp.sparsity.base import Sparsity

    if group == "model" and not issubclass(target, Autoencoder):
        missing = _missing(target, MODEL_METHODS)
        if missing or not issubclass(target, torch.nn.Module):
            raise ConfigError("model._target_", _not_an("model", target, missing))
    if group == "sparsity" and not issubclass(target, Sparsity):
        missing = _missing(target, SPARSITY_METHODS)
        if missing or not issubclass(target, torch.nn.Module):
            raise ConfigError("sparsity._target_", _not_an("sparsity", target, missing))


def _not_an(group: str, what: Any, missing: list[str]) -> str:
    name = f"{what.__module__}.{what.__qualname__}" if isinstance(what, type) else type(what).__name__
    built = f"{name} is" if isinstance(what, type) else f"the target built a {name}, which is"
    lacks = f" and lacks {', '.join(missing)}" if missing else ""
    if group == "model":
        return (f"{built} not an aeexp Autoencoder{lacks}; allowed: an aeexp.models.Autoencoder, or a torch.nn.Module "
                f"with forward_parts, encode, decode and encoder, bottleneck, decoder modules ({INTERFACE_DOC})")
    return (f"{built} not an aeexp Sparsity{lacks}; allowed: a subclass of aeexp.sparsity.Sparsity, or a "
            f"torch.nn.Module with forward, penalty and auxiliary ({INTERFACE_DOC})")


def build_component(group: str, registry: Registry, node: Any, **context: Any) -> Any:
    """``registry.build``, with a ``_target_`` that cannot be imported or called with the
    node's keys said in one ConfigError line."""
    plain = _plain(node)
    if isinstance(plain, dict) and "_target_" in plain:
        target = locate_target(f"{group}._target_", plain["_target_"])
        check_target_signature(group, target, plain, tuple(context))
    from hydra.errors import InstantiationException

    try:
        return registry.build(node, **context)
    except InstantiationException as err:
        if isinstance(err.__cause__, ImportError):
            raise ConfigError(f"{group}._target_", f"{str(err).splitlines()[0]} ({err.__cause__}): "
                              f"{PYTHONPATH_HINT}") from None
        raise


def check_autoencoder(model: Any, node: Any) -> None:
    """What the trainer and evaluation use of a model: a Module with forward_parts, encode,
    decode and its encoder, bottleneck and decoder modules."""
    from aeexp.models.autoencoder import Autoencoder

    key = "model._target_" if "_target_" in node else "model"
    if not isinstance(model, Autoencoder):
        missing = _missing(model, MODEL_METHODS, MODEL_MODULES)
        if missing or not isinstance(model, torch.nn.Module):
            raise ConfigError(key, _not_an("model", model, missing))
    lacking = _missing(model.bottleneck, SPARSITY_METHODS)
    if lacking:
        raise ConfigError(key, (
            f"the model's bottleneck is a {type(model.bottleneck).__name__}, which lacks {', '.join(lacking)}; "
            "allowed: the bottleneck argument the model is called with (the sparsity module), kept as "
            f"Autoencoder(encoder, bottleneck, decoder) keeps it ({INTERFACE_DOC})"))


def check_sparsity(module: Any, node: Any) -> None:
    from aeexp.sparsity.base import Sparsity

    if isinstance(module, Sparsity):
        return
    missing = _missing(module, SPARSITY_METHODS)
    if missing or not isinstance(module, torch.nn.Module):
        raise ConfigError("sparsity._target_" if "_target_" in node else "sparsity",
                          _not_an("sparsity", module, missing))


def bind_sparsity(bottleneck: Any, model: torch.nn.Module, node: Any, input_shape: tuple[int, ...],
                  batch_size: int) -> None:
    """Call the bottleneck's optional ``bind(code_features, batch_size)`` once the code's width
    is known (one sample through the encoder): it sizes what depends on them and refuses, as a
    ConfigError, what cannot work (top-k's k above the code width). What a user's ``bind``
    raises otherwise, or a ``bind`` that cannot be called, is one ConfigError too."""
    bind = getattr(bottleneck, "bind", None)
    if bind is None:
        return
    key = "sparsity._target_" if "_target_" in node else "sparsity"
    name = type(bottleneck).__name__
    if not callable(bind):
        raise ConfigError(key, f"{name}.bind is not callable ({type(bind).__name__}); allowed: a method "
                          f"bind(code_features, batch_size), or none ({INTERFACE_DOC})")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        code = model.encoder(torch.zeros(1, *input_shape))
    model.train(was_training)
    features = code[0].numel()
    try:
        bind(features, batch_size)
    except ConfigError:
        raise
    except Exception as err:
        if type(bottleneck).__module__.split(".")[0] == "aeexp":
            raise  # aeexp's own methods raise ConfigError; anything else is a bug to see in full
        reason = " ".join(str(err).split()) or "no message"
        raise ConfigError(key, (
            f"{name}.bind({features}, {batch_size}) raised {type(err).__name__}: {reason}; allowed: a bind that "
            f"accepts this code width and trainer.batch_size, or refuses with aeexp.config.ConfigError "
            f"({INTERFACE_DOC})")) from None


def config_input_shape(dataset: Any) -> Optional[tuple[int, ...]]:
    """The (C, H, W) of images or (D,) of vectors a registered dataset's config implies, or None when only the data knows."""
    if not isinstance(dataset, dict) or "_target_" in dataset:
        return None
    name = dataset.get("name")
    try:
        if name in ("mnist", "fashion_mnist", "kmnist"):
            return (1, 28, 28)
        if name == "synthetic":
            return (int(dataset["channels"]), int(dataset["height"]), int(dataset["width"]))
        if name == "sparse_features":
            return (int(dataset["dim"]),)
        if name == "image_folder":
            size = list(dataset["size"])
            return (int(dataset["channels"]), int(size[0]), int(size[-1]))
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


# -------------------------------------------------------------- checks before any work
@cross_check
def check_targets(cfg: dict[str, Any]) -> None:
    """Every ``_target_`` must import (else a PYTHONPATH hint); a group's must take the node's
    keys (and what aeexp adds), the model's and the sparsity's must be the kind of class the
    trainer uses."""
    from aeexp.trust import find_targets

    for key, target in find_targets(cfg):
        located = locate_target(key, target)
        group = key.rsplit("._target_", 1)[0]
        if group in ("model", "sparsity"):
            check_target_class(group, located)
        if group in BUILD_CONTEXT:
            check_target_signature(group, located, cfg[group], BUILD_CONTEXT[group])


@cross_check
def check_model_size(cfg: dict[str, Any]) -> None:
    """A registered model on a dataset whose image shape the config tells is built on the
    meta device: too many parameters, or a conv stack too deep for the image, fail here,
    before the data is read."""
    shape = config_input_shape(cfg.get("dataset"))
    if shape is None:
        return
    estimate = estimate_parameters(cfg["model"], cfg["sparsity"], shape)
    if estimate is not None:
        refuse_large_model(estimate, _max_parameters(cfg), shape)


