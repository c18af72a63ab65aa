"""Configs read back from a file: settled to plain values and checked for code before use.

A config the user writes may name their own class with ``_target_`` (README, "Your own
components"): building it imports that dotted path and calls it, which is right for the
user's own command line. A config read back from a run (the YAML text inside a checkpoint)
is data from whoever wrote the file, and there a ``_target_`` is code that evaluating the
run would import and call: ``dataset: {_target_: shutil.copyfile, _args_: [/dev/null,
<file>]}`` empties ``<file>``. So a loaded config goes through two steps before anything is
built from it:

1. :func:`settle_loaded_config` resolves every ``${...}`` interpolation until none is left,
   so what is checked is exactly what will be built (a resolver such as ``oc.create`` can
   make a ``_target_`` node out of a string, and an escaped ``\\${...}`` resolves to a fresh
   interpolation).
2. :func:`guard_loaded_config` finds every ``_target_`` at any depth
   (:func:`find_targets`) and refuses the config unless the caller opted in
   (``eval.trust_targets=true``), in which case each target is logged before it is used.

A config without ``_target_`` is built from registered names only. :func:`read_loaded_config`
does it all, from the stored text; the YAML is parsed by OmegaConf's safe loader, so a
``!!python/...`` tag builds nothing and is refused in one line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from aeexp.checkpoints import CheckpointError

log = logging.getLogger(__name__)

TARGET_KEY = "_target_"
OPT_IN = "eval.trust_targets=true"
# Each round resolves one level of escaping; real configs are settled after one.
MAX_ROUNDS = 8


class UntrustedConfigError(CheckpointError):
    """A loaded config names code to import and call (``_target_``) and the caller did not opt in."""


def find_targets(cfg: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every ``_target_`` in ``cfg`` (dicts and lists, at any depth) as ``(dotted key, target)``."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    found: list[tuple[str, str]] = []
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == TARGET_KEY:
                found.append((path, str(value)))
            else:
                found.extend(find_targets(value, path))
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            found.extend(find_targets(value, f"{prefix}[{i}]"))
    return found


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def settle_loaded_config(cfg: DictConfig, source: Path | str) -> DictConfig:
    """``cfg`` with every interpolation resolved into a plain value, none left to resolve later.

    Resolving is repeated until it changes nothing (a resolved value may itself be an
    interpolation). The resolvers a loaded config can reach compute values only (OmegaConf's
    ``oc.*``, Hydra's ``now``/``hydra``/``python_version``, aeexp's ``aeexp_job_dirname``);
    none imports, calls or writes anything the config names. CheckpointError if an
    interpolation cannot be resolved or never settles.
    """
    for _ in range(MAX_ROUNDS):
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
            if plain == OmegaConf.to_container(cfg, resolve=False):
                return cfg
            cfg = OmegaConf.create(plain)
        except Exception as err:  # InterpolationResolutionError, GrammarParseError, a resolver's own error
            raise CheckpointError(
                f"{source}: its config has an interpolation that cannot be resolved ({_first_line(err)})"
            ) from None
    raise CheckpointError(f"{source}: its config's interpolations still resolve to interpolations after "
                          f"{MAX_ROUNDS} rounds (it was not written by aeexp, or was tampered with)")


def guard_loaded_config(cfg: DictConfig, source: Path | str, trust: bool = False) -> DictConfig:
    """Refuse a loaded config that names code, unless ``trust``; then log each target first.

    ``cfg`` must be settled (:func:`settle_loaded_config`). Returns ``cfg``.
    """
    targets = find_targets(cfg)
    if not targets:
        return cfg
    listed = ", ".join(f"{key}: {target}" for key, target in targets)
    if not trust:
        raise UntrustedConfigError(
            f"{source}: its config names code to import and call ({listed}); a run is rebuilt from "
            f"registered names only, because a _target_ in a file runs whatever its author chose. "
            f"If you trust who wrote this run, pass {OPT_IN}"
        )
    log.warning("%s: %s, so these callables from its config are imported and called: %s",
                source, OPT_IN, listed)
    return cfg


_PYTHON_TAG = re.compile(r"tag:yaml\.org,2002:(python/\S*?)'")


def read_loaded_config(text: Any, source: Path | str, trust: bool = False) -> DictConfig:
    """A config stored in a file (a checkpoint's YAML text), parsed, settled and guarded.

    CheckpointError (one line naming ``source``) if it is not a YAML mapping, if it carries a
    YAML tag that would build a Python object, or if an interpolation fails to resolve;
    UntrustedConfigError if it names a ``_target_`` and ``trust`` is false.
    """
    try:
        cfg = OmegaConf.create(text)
    except Exception as err:  # YAMLError, RecursionError (self-referencing aliases), unsupported values
        tag = _PYTHON_TAG.search(str(err))
        if tag:
            raise CheckpointError(
                f"{source}: its config asks YAML to build a Python object (!!{tag.group(1)}); configs are read "
                "with a safe loader that builds none (it was not written by aeexp, or was tampered with)"
            ) from None
        raise CheckpointError(f"{source}: its config is not readable YAML ({_first_line(err)})") from None
    if not isinstance(cfg, DictConfig):
        raise CheckpointError(f"{source}: its config is not a mapping")
    return guard_loaded_config(settle_loaded_config(cfg, source), source, trust)
