"""Config schemas and the validation that runs before any work.

Each config group is checked against a dataclass schema: the registered builder's schema
for registry groups (model, sparsity, noise, dataset, optimizer, scheduler), and the
schemas below for device, trainer and paths. OmegaConf does the type and unknown-key checks;
``__post_init__`` of each schema does the range checks. Every failure becomes one
:class:`ConfigError` naming the full key, the value and what is allowed, so a typo on the
command line costs a second instead of a crashed run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from aeexp.registry import (
    DATASETS,
    MODELS,
    NOISE,
    OPTIMIZERS,
    SCHEDULERS,
    SPARSITY,
    TRACKERS,
    Registry,
    RegistryError,
)


class ConfigError(ValueError):
    """A config value that cannot work; ``key`` is its dotted path."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def within(self, prefix: str) -> "ConfigError":
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.message)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError for ``key`` unless ``ok``; ``allowed`` says what would be valid."""
    if not ok:
        raise ConfigError(key, f"got {value!r}, allowed: {allowed}")


def require_choice(key: str, value: Any, choices: list[str] | tuple[str, ...]) -> None:
    require(value in choices, key, value, "one of " + ", ".join(map(str, choices)))


SEED_MAX = 2**32 - 1


def require_seed(key: str, value: Any) -> None:
    """A seed every generator we feed accepts: torch.manual_seed, torch.Generator and
    numpy/scikit-learn's random_state all take 0 to 2**32-1."""
    require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX, key, value,
            f"an integer in [0, {SEED_MAX}] (0 to 2**32-1, the range torch.manual_seed and numpy both accept)")


@dataclass
class NamedConfig:
    """Schema of a component that takes no parameters besides its name."""

    name: str


@dataclass
class DeviceConfig:
    name: str = "auto"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        require_choice("name", self.name, ("auto", "cpu", "cuda", "mps"))
        require_choice("precision", self.precision, ("fp32", "bf16", "fp16"))


STAGE_TRAIN_WORDS = ("all", "new")


@dataclass
class StageConfig:
    """One training stage (``trainer.stages[i]``): what the model looks like and what trains.

    ``epochs``: this stage's epochs (null: ``trainer.epochs``); the plateau scheduler may end
    the stage earlier. ``tied``: share each decoder Linear's weight with its mirror encoder
    Linear (null: as ``model.tied``). ``depth``: how many encoder Linear layers, from the
    input side, are in use, with their mirror decoder layers (null: all of them): the greedy
    layer-wise recipe grows it stage by stage. ``train``: what trains, the rest is frozen:
    ``all``, ``new`` (the layers this stage adds) and/or layer paths such as ``encoder.2``.
    ``optimizer`` / ``scheduler``: overrides of those groups for this stage (e.g.
    ``{lr: 1.0e-4}``); every stage starts a fresh optimizer and scheduler either way.
    """

    name: Optional[str] = None
    epochs: Optional[int] = None
    tied: Optional[bool] = None
    depth: Optional[int] = None
    train: list[str] = field(default_factory=lambda: ["all"])
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.epochs is None or self.epochs >= 1, "epochs", self.epochs,
                "null (trainer.epochs) or an integer >= 1")
        require(self.depth is None or self.depth >= 1, "depth", self.depth,
                "null (the whole model) or an integer >= 1 (encoder Linear layers in use)")
        train = list(self.train)
        require(len(train) >= 1, "train", train, f"a non-empty list of {', '.join(STAGE_TRAIN_WORDS)} or layer paths")
        require("all" not in train or len(train) == 1, "train", train,
                "[all] alone (everything trains), or a list of new and/or layer paths")


DEFAULT_MAX_PARAMETERS = 100_000_000
"""``trainer.max_parameters``: larger models are refused before they are built (100 million
fp32 parameters are 0.4 GB of weights, 1.6 GB with their gradients and Adam's moments)."""

MONITORS = ("auto", "val_mse", "val_denoise_mse")
"""What ``best.pt`` and the plateau scheduler follow; ``auto`` is ``val_denoise_mse`` when
noise is on and validated (a denoiser is judged on what it is trained for), else ``val_mse``."""


@dataclass
class TrainerConfig:
    epochs: int = 50
    batch_size: int = 512
    val_batch_size: int = 2048
    resume: bool = False
    resume_from: str = "last"
    grad_clip: Optional[float] = None
    image_every: int = 5
    num_images: int = 8
    num_threads: Optional[int] = None
    progress: bool = True
    divergence_factor: Optional[float] = 1000.0
    monitor: str = "auto"
    stages: list[StageConfig] = field(default_factory=list)
    max_parameters: Optional[int] = DEFAULT_MAX_PARAMETERS
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None
    log_every_n_steps: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.val_batch_size >= 1, "val_batch_size", self.val_batch_size, "an integer >= 1")
        require(self.log_every_n_steps is None or self.log_every_n_steps >= 1, "log_every_n_steps",
                self.log_every_n_steps, "null (no per-step scalars) or an integer >= 1 (every that many optimizer steps)")
        for key in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, value,
                    "null (every batch) or an integer >= 1 (that many batches of the split's first images)")
        require(
            self.grad_clip is None or self.grad_clip > 0,
            "grad_clip", self.grad_clip, "null (no clipping) or a max gradient norm > 0",
        )
        require_choice("resume_from", self.resume_from, ("last", "best"))
        require_choice("monitor", self.monitor, MONITORS)
        require(self.image_every >= 0, "image_every", self.image_every, "an integer >= 0 (0: never)")
        require(1 <= self.num_images <= 64, "num_images", self.num_images, "an integer in [1, 64]")
        require(
            self.num_threads is None or self.num_threads >= 1,
            "num_threads", self.num_threads, "null (auto: one per core, see aeexp/threads.py) or an integer >= 1",
        )
        require(
            self.divergence_factor is None or self.divergence_factor > 1,
            "divergence_factor", self.divergence_factor, "null (only non-finite losses stop) or a factor > 1",
        )
        require(self.max_parameters is None or self.max_parameters >= 1, "max_parameters", self.max_parameters,
                "null (no limit) or an integer >= 1 (models with more parameters are refused before they are built)")


def project_root() -> str:
    """The project's folder, for ``paths.root_dir`` (``conf/paths/default.yaml``) when
    ``AEEXP_ROOT`` is not set: the checkout holding ``conf/`` beside the ``aeexp`` package
    (an editable install or a run from the checkout), else the folder of the script being
    run if it holds ``conf/`` (``train.py`` with a non-editable install), else the current
    directory. Independent of where a command is launched from."""
    for folder in (Path(__file__).resolve().parent.parent, Path(sys.argv[0] or ".").resolve().parent):
        if (folder / "conf").is_dir():
            return str(folder)
    return os.getcwd()


def absolute_path(path: str) -> str:
    """``path`` made absolute (``~`` expanded; a relative path is taken from the current directory)."""
    return os.path.abspath(os.path.expanduser(str(path)))


# Used by conf/paths/default.yaml, so every path of a run is absolute whatever the launch directory.
OmegaConf.register_new_resolver("aeexp_root", project_root, replace=True)
OmegaConf.register_new_resolver("aeexp_abspath", absolute_path, replace=True)


@dataclass
class PathsConfig:
    """Where things live (``conf/paths/default.yaml``), absolute: ``root_dir`` the project,
    ``data_dir`` the datasets (``dataset.root`` is ``${paths.data_dir}``), ``output_dir`` the
    runs (``hydra.run.dir`` and ``hydra.sweep.dir`` are below it), ``cache_dir`` files a
    component may keep between runs. None: not set (a config written before ``paths``)."""

    root_dir: Optional[str] = None
    data_dir: Optional[str] = None
    output_dir: Optional[str] = None
    cache_dir: Optional[str] = None


REGISTRY_GROUPS: dict[str, Registry] = {
    "model": MODELS,
    "sparsity": SPARSITY,
    "noise": NOISE,
    "dataset": DATASETS,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
}
FIXED_GROUPS: dict[str, type] = {"device": DeviceConfig, "trainer": TrainerConfig, "paths": PathsConfig}
TOP_LEVEL_KEYS = {"seed", "tags", "optimized_metric"}

OPTIMIZED_METRICS = ("best_score", "best_val_mse", "val_mse", "val_denoise_mse", "train_loss", "train_mse", "val_l0",
                     "dead_fraction", "val_mean_activation", "val_fvu")
"""What ``optimized_metric`` may name: figures of ``metrics.json`` from training and validation
(never test). ``null``: ``best_score``, the best value of ``trainer.monitor``."""

# Rules that span groups (e.g. KL sparsity needs a bounded code); each takes the checked
# config as a dict of groups, may fill in derived values, and raises ConfigError.
CROSS_CHECKS: list[Callable[[dict[str, Any]], None]] = []


def cross_check(rule: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Decorator registering a rule that spans config groups."""
    CROSS_CHECKS.append(rule)
    return rule


def validate(cfg: DictConfig, trackers_installed: bool = True) -> DictConfig:
    """Check a composed config; return it with every group filled from its schema's defaults.

    Raises ConfigError (naming key, value and the valid choices) on the first problem.
    ``trackers_installed``: also require the packages of the ``logger`` trackers chosen
    (False for a config that will not be trained: evaluating an MLflow run needs no MLflow).
    """
    out: dict[str, Any] = {}
    check_resolvable(cfg)
    if isinstance(cfg, DictConfig):  # resolved as a whole: groups refer to each other (root: ${paths.data_dir})
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in cfg:
        if key not in REGISTRY_GROUPS and key not in FIXED_GROUPS and key not in TOP_LEVEL_KEYS and key != "logger":
            valid = sorted(set(REGISTRY_GROUPS) | set(FIXED_GROUPS) | TOP_LEVEL_KEYS | {"logger"})
            raise ConfigError(str(key), f"unknown top-level key; valid keys: {', '.join(valid)}")
    seed = cfg.get("seed", 0)
    require_seed("seed", seed)
    out["seed"] = seed
    tags = cfg.get("tags", [])
    tags = list(tags) if isinstance(tags, (ListConfig, list, tuple)) else tags
    require(isinstance(tags, list) and all(isinstance(t, (str, int, float)) for t in tags), "tags", tags,
            "a list of short labels, e.g. tags=[baseline,fmnist]")
    out["tags"] = [str(t) for t in tags]
    metric = cfg.get("optimized_metric")
    require(metric is None or metric in OPTIMIZED_METRICS, "optimized_metric", metric,
            "null (the best value of trainer.monitor) or one of " + ", ".join(OPTIMIZED_METRICS))
    out["optimized_metric"] = metric
    for group, registry in REGISTRY_GROUPS.items():
        node = _group_node(cfg, group)
        out[group] = check_registry_node(group, node, registry)
    for group, schema in FIXED_GROUPS.items():
        node = cfg.get(group, {})
        out[group] = check_node(group, node, schema)
    out["logger"] = check_logger(cfg.get("logger"), trackers_installed)
    for rule in CROSS_CHECKS:
        rule(out)
    return OmegaConf.create(out)


def check_logger(node: Any, installed: bool = True) -> dict[str, Any]:
    """``logger``: the trackers a run reports to, one key each (``logger=[tensorboard,csv]``
    merges ``tensorboard: {}`` and ``csv: {}``), each checked against its registered schema
    (:mod:`aeexp.training.trackers`); absent: TensorBoard alone, as before the group existed.
    ``installed``: a tracker's optional package (MLflow) must be importable."""
    names = ", ".join(TRACKERS.names())
    allowed = f"one or more of {names}, e.g. logger=csv or logger=[tensorboard,csv] (conf/logger/)"
    if node is None:
        node = {"tensorboard": {}}
    require(isinstance(node, (dict, DictConfig)) and len(node) > 0, "logger", _plain(node), allowed)
    out = {}
    for name, options in node.items():
        require(name in TRACKERS, "logger", str(name), allowed)
        out[name] = check_node(f"logger.{name}", options if options is not None else {}, TRACKERS.schema(name))
        package = TRACKERS.get(name).requires
        if installed and package and importlib.util.find_spec(package) is None:
            others = ", ".join(n for n in TRACKERS.names() if n != name)
            raise ConfigError("logger", f"got {name!r}, but {package} is not installed: pip install aeexp[{name}] "
                              f"(or choose other trackers: {others})")
    return out


@cross_check
def check_group_seeds(cfg: dict[str, Any]) -> None:
    """Seeds inside groups (``dataset.split_seed``, ``dataset.seed``, ``noise.val_seed``) are
    handed to torch generators: they need the same range as ``seed``."""
    for group in REGISTRY_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, dict) or "_target_" in node:
            continue
        for key, value in node.items():
            if isinstance(key, str) and key.endswith("seed") and value is not None:
                require_seed(f"{group}.{key}", value)


def check_resolvable(cfg: Any, prefix: str = "") -> None:
    """Every ``${...}`` interpolation resolves, else a ConfigError naming its key."""
    if not isinstance(cfg, (DictConfig, ListConfig)):
        return
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        key = f"{prefix}.{key}" if prefix and key else prefix or key
        raise ConfigError(key, f"cannot be resolved ({str(err).strip().splitlines()[0]})") from None


def _group_node(cfg: DictConfig, group: str) -> DictConfig:
    node = cfg.get(group)
    if not isinstance(node, DictConfig):
        raise ConfigError(group, f"missing config group (got {node!r}); choose one with {group}=<option>")
    return node


def check_registry_node(group: str, node: DictConfig, registry: Registry) -> Any:
    """Check a node that names a registered builder against that builder's schema."""
    if "_target_" in node:
        # A user's own class: its constructor is the schema, checked when it is built.
        return OmegaConf.to_container(node, resolve=True)
    name = node.get("name")
    if name is None:
        raise ConfigError(f"{group}.name", f"missing; allowed: one of {', '.join(registry.names())}, or a _target_ class")
    try:
        schema = registry.schema(name)
    except RegistryError as err:
        raise ConfigError(f"{group}.name", str(err)) from None
    return check_node(group, node, schema or NamedConfig)


def check_node(prefix: str, node: Any, schema: type) -> dict[str, Any]:
    """Merge ``node`` into ``schema``; return the checked values as plain containers."""
    if not isinstance(node, (dict, DictConfig)) and not is_dataclass(node):
        valid = ", ".join(f.name for f in fields(schema))
        raise ConfigError(prefix, f"got {_plain(node)!r}, allowed: a mapping of keys ({valid})")
    check_resolvable(node, prefix)
    _check_list_items(prefix, node, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        checked = OmegaConf.to_object(merged)
    except ConfigError as err:
        raise err.within(prefix) from None
    except ConfigKeyError as err:
        key = _full_key(prefix, err)
        owner = getattr(err, "object_type", None)
        valid = ", ".join(f.name for f in fields(owner if is_dataclass(owner) else schema))
        raise ConfigError(key, f"unknown key; valid keys here: {valid}") from None
    except MissingMandatoryValue as err:
        raise ConfigError(_full_key(prefix, err), "missing: this value is required (it is ??? in the YAML)") from None
    except ValidationError as err:
        key = _full_key(prefix, err)
        raise ConfigError(key, str(err).splitlines()[0]) from None
    except OmegaConfBaseException as err:
        raise ConfigError(prefix, str(err).splitlines()[0]) from None
    return OmegaConf.to_container(OmegaConf.structured(checked), resolve=True)  # type: ignore[return-value]


def _check_list_items(prefix: str, node: Any, schema: type) -> None:
    """Check each item of a list-of-dataclass field on its own, so an error names its
    path (``model.encoder[1].dropout``) rather than just the innermost key."""
    if not isinstance(node, (dict, DictConfig)):
        return
    for name, hint in get_type_hints(schema).items():
        item_type = get_args(hint)[0] if get_origin(hint) is list and get_args(hint) else None
        items = node.get(name)
        if item_type is None or not is_dataclass(item_type) or not isinstance(items, (list, ListConfig)):
            continue
        for i, item in enumerate(items):
            check_node(f"{prefix}.{name}[{i}]", item, item_type)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _full_key(prefix: str, err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
    return f"{prefix}.{key}" if key else prefix
