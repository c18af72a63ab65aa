"""One row per run in TensorBoard's HParams tab, training's figures and evaluation's side by side.

How TensorBoard's hparams plugin builds that table: each run directory that holds a
``session_start_info`` is a session (a row, with its hyperparameters); the metric columns
are the ``metric_infos`` of the first ``experiment`` record it finds, in any run; a session's
metric ``(group, tag)`` is the last value of the scalar ``tag`` in the run ``<session>/<group>``.

So a run has exactly one session, the one training writes in the run directory (its config
and config-group choices, :func:`aeexp.training.tensorboard.write_hparams`), and evaluation
writes none: its figures are the ``eval/<metric>`` scalars that ``evaluate.py`` writes to
``<run>/eval/``, which is the group ``eval`` of that session. Training's experiment record
names them in advance (:data:`EVALUATION_METRICS`, as group ``eval``, tag ``eval/<metric>``),
so the row of a run shows its test figures once it is evaluated and empty cells before; there
is no second session to disagree with the first, and nothing is averaged across sessions.

Evaluation adds an experiment record of its own in ``<run>/eval/``
(:func:`write_evaluation_hparams`): training's hyperparameter and metric lists plus every
figure this evaluation produced. TensorBoard uses whichever experiment record it meets first,
and any of them lists the figures above; this one also covers runs trained before training
named the evaluation's figures, and figures outside the list (``ssl5_frozen`` when
``eval.labels_per_class`` is not the default).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

log = logging.getLogger(__name__)

EVALUATION_GROUP = "eval"  # <run>/eval/, where evaluate.py writes its scalars
# evaluate.py's figures, as keys of <run>/eval/metrics.json; ssl<n>_* for eval.labels_per_class's default [10, 100]
EVALUATION_METRICS = (
    "val_mse", "test_mse", "test_psnr", "test_fvu", "test_explained_variance", "test_l0", "dead_fraction", "pca_mse",
    "mse_vs_pca", "probe_accuracy", "pixel_probe_accuracy", "knn_accuracy", "mmcs", "recovered_90",
    *(f"ssl{n}_{kind}" for n in (10, 100) for kind in ("frozen", "fine_tuned", "scratch")),
)


def evaluation_metric_infos(names: Iterable[str]) -> list[api_pb2.MetricInfo]:
    """The HParams columns of evaluation figures: scalar ``eval/<name>`` of ``<run>/eval/``."""
    return [api_pb2.MetricInfo(name=api_pb2.MetricName(group=EVALUATION_GROUP, tag=f"eval/{name}"),
                               display_name=f"eval/{name}") for name in names]


def evaluation_figures(metrics: dict[str, Any]) -> list[str]:
    """The figures of an evaluation's ``metrics.json`` that are HParams columns: those of
    :data:`EVALUATION_METRICS` and every semi-supervised accuracy (``ssl<n>_<kind>``), when
    finite numbers (``evaluate.py`` writes a scalar for each)."""
    return [k for k, v in metrics.items() if (k in EVALUATION_METRICS or k.startswith("ssl"))
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def with_metrics(experiment: api_pb2.Experiment, extra: Iterable[api_pb2.MetricInfo]) -> Summary:
    """The experiment record summary of ``experiment`` with the metric columns ``extra`` added
    (those it already has are not repeated)."""
    infos = list(experiment.metric_infos)
    seen = {(i.name.group, i.name.tag) for i in infos}
    infos += [i for i in extra if (i.name.group, i.name.tag) not in seen]
    combined = api_pb2.Experiment()
    combined.CopyFrom(experiment)
    del combined.metric_infos[:]
    combined.metric_infos.extend(infos)
    data = plugin_data_pb2.HParamsPluginData(experiment=combined)
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=metadata.create_summary_metadata(data),
                                        tensor=metadata.NULL_TENSOR)])


def parse_experiment(summary: Summary) -> api_pb2.Experiment:
    """The Experiment inside an HParams experiment summary."""
    return metadata.parse_experiment_plugin_data(summary.value[0].metadata.plugin_data.content)


def training_experiment(run_dir: Path) -> api_pb2.Experiment | None:
    """The experiment record training wrote in ``run_dir``'s event files (the last one), or None
    (a run that has not finished, or a damaged file)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = None
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag == metadata.EXPERIMENT_TAG and \
                            value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                        found = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
        except Exception as err:  # a truncated events file: what was read so far
            log.warning("%s: %s", path, err)
    return found


def write_evaluation_hparams(run_dir: Path | str, metrics: dict[str, Any]) -> Path | None:
    """After ``evaluate_run``: the experiment record of ``<run>/eval/`` (training's hyperparameters
    and metrics, and the figures of ``metrics`` as group ``eval``), in an event file of its own
    there; returns its folder, or None with one log line when training recorded no HParams
    session (a run stopped before its last epoch), whose row there is then none to add to."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    experiment = training_experiment(run_dir)
    if experiment is None:
        log.info("%s: training wrote no HParams session (it has not finished), so its evaluation has no row in "
                 "TensorBoard's HParams tab; the figures are the eval/* scalars of %s", run_dir,
                 run_dir / EVALUATION_GROUP)
        return None
    folder = run_dir / EVALUATION_GROUP
    writer = SummaryWriter(log_dir=str(folder), filename_suffix=".hparams")
    try:
        writer.file_writer.add_summary(with_metrics(experiment, evaluation_metric_infos(evaluation_figures(metrics))))
    finally:
        writer.close()
    return folder
