"""Hyperparameters in TensorBoard's HParams tab, from the run's config."""

from __future__ import annotations

from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary


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


def write_hparams(writer: SummaryWriter, config: dict[str, Any], metrics: dict[str, float]) -> None:
    """Record hyperparameters and final metrics in the run's own event file, so
    ``tensorboard --logdir outputs`` lines up runs side by side in the HParams tab."""
    metric_dict = {f"hparam/{k}": float(v) for k, v in metrics.items()}
    experiment, start, end = hparams_summary(flatten_config(config), metric_dict)
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(start)
    writer.file_writer.add_summary(end)
    for key, value in metric_dict.items():
        writer.add_scalar(key, value)
