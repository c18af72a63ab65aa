"""Hyperparameters in TensorBoard's HParams tab, from the run's config: the run's one HParams
session, whose row ``evaluate.py``'s figures join later (:mod:`aeexp.hparams` says how)."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from aeexp.hparams import EVALUATION_METRICS, evaluation_metric_infos, parse_experiment, with_metrics


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys with values TensorBoard's HParams tab accepts (numbers, strings, bools)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name == "paths":
            continue  # where files live on this machine: not a hyperparameter to compare runs by
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif value is None:
            flat[name] = "null"
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            flat[name] = ",".join(map(str, value))  # tags: one comparable string
        else:
            flat[name] = str(value)
    return flat


def group_choices() -> dict[str, str]:
    """The config-group options the run was composed from (``model: fc``, ``sparsity: l1``,
    ``experiment: search_l1``...), as Hydra recorded them for a run it started (``train.py``,
    each job of a sweep); ``{}`` for a config composed elsewhere (tests, notebooks). Hydra's
    own groups, ``paths`` and groups left unchosen are left out."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {group: str(option) for group, option in choices.items()
            if option is not None and not group.startswith("hydra/") and group != "paths"}


def write_hparams(writer: SummaryWriter, config: dict[str, Any], metrics: dict[str, float],
                  choices: dict[str, str] | None = None) -> None:
    """Record hyperparameters and final metrics in the run's own event file, so
    ``tensorboard --logdir outputs`` lines up runs side by side in the HParams tab.
    ``choices`` (group -> option, :func:`group_choices`) join them under the group's name
    (``model`` = ``fc256_gelu`` beside ``model.name`` = ``fc``). The experiment record also
    names the evaluation's figures (``eval/test_mse``... in ``<run>/eval/``), so the HParams
    tab has their columns and this session's row gets them once ``evaluate.py`` has run."""
    metric_dict = {f"hparam/{k}": float(v) for k, v in metrics.items()}
    experiment, start, end = hparams_summary({**flatten_config(config), **(choices or {})}, metric_dict)
    experiment = with_metrics(parse_experiment(experiment), evaluation_metric_infos(EVALUATION_METRICS))
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(start)
    writer.file_writer.add_summary(end)
    for key, value in metric_dict.items():
        writer.add_scalar(key, value)
