"""One run across processes (torchrun + DDP, aeexp.training.distributed).

The slow tests start two ranks on the CPU (gloo) as torchrun would, by its environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), each rank a forked copy of
``train.py`` (tests/cli_runner.py: no interpreter start per rank), and hold them against one
process on the same global batch: the same per-epoch losses and final weights, an exact resume
after a signal that reached one rank only, and one line when a rank dies. The fast tests
cover the pure parts (sharding, rank-0 gating, refusals, the failure line) in the inner loop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn

from aeexp.config import ConfigError
from aeexp.training import distributed
from aeexp.training.checkpointing import Checkpoints
from cli_runner import REPO, finish_cli, start_cli

# 190 rows in batches of 63: three batches split 32/31 between two ranks (unequal shares),
# then one row alone (rank 1 has none and takes part with weight 0). Gaussian noise on the
# whole batch and an L1 penalty: both must come out as one process's.
RUN = ("dataset=synthetic", "dataset.num_train=190", "dataset.num_val=64", "dataset.num_test=32",
       "trainer.batch_size=63", "trainer.val_batch_size=64", "trainer.epochs=3", "trainer.progress=false",
       "trainer.image_every=0", "device=cpu", "model.latent_dim=16", "sparsity=l1", "noise=gaussian", "seed=5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recording(path: Path, then=None):
    """A ``before`` hook for a forked run: each epoch's training figures appended to ``path``
    (outside the run directory), then ``then()``."""

    def before() -> None:
        from aeexp.training.trainer import Trainer

        real = Trainer.train_epoch

        def train_epoch(self, epoch):
            figures = real(self, epoch)
            with open(path, "a") as handle:
                handle.write(json.dumps({"epoch": epoch, **figures}) + "\n")
            return figures

        Trainer.train_epoch = train_epoch
        if then is not None:
            then()

    return before


def at_global_step(step: int, action) -> None:
    """In this (forked) process, ``action()`` just before the trainer's ``step``-th optimizer step."""
    from aeexp.training.trainer import Trainer

    real = Trainer.train_step

    def train_step(self, clean):
        if self.global_step + 1 == step:
            action()
        return real(self, clean)

    Trainer.train_step = train_step


def launch(args: list[str], cwd: Path, befores: list, timeout: float = 90) -> list[tuple[int, str]]:
    """``train.py args`` as len(befores) ranks of one run; each rank's (exit status, output)."""
    port, world = free_port(), len(befores)
    runs = []
    for rank, before in enumerate(befores):
        env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), distributed.TIMEOUT_ENV: "60"}
        runs.append(start_cli("train.py", args, cwd, timeout, before=before, env=env))
    return [finish_cli(run) for run in runs]


def epochs(path: Path) -> dict[int, dict]:
    return {row["epoch"]: row for row in map(json.loads, path.read_text().splitlines())}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, and two ranks started a second apart with Hydra's default (timestamped)
    run directory, on the same config."""
    root = tmp_path_factory.mktemp("ddp")
    code, out = launch([*RUN, f"hydra.run.dir={root / 'single'}"], root, [recording(root / "single.jsonl")])[0], ""
    assert code[0] == 0, code[1]
    results = launch(list(RUN), root, [recording(root / "rank0.jsonl"),
                                       recording(root / "rank1.jsonl", then=lambda: time.sleep(1.1))])
    for code, out in results:
        assert code == 0, out
    folders = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
    return root, folders, results


@pytest.mark.slow  # two ranks end to end; the sharding and weighting stay covered by the fast tests below
def test_two_ranks_train_as_one_process(runs):
    root, folders, _ = runs
    assert len(folders) == 1, folders  # rank 1 (a second later) followed rank 0's folder and left none of its own
    single, both = epochs(root / "single.jsonl"), epochs(root / "rank0.jsonl")
    assert both == epochs(root / "rank1.jsonl")  # every rank agrees on the whole batch's figures
    assert sorted(single) == sorted(both) == [1, 2, 3]
    for epoch in single:
        for key in ("loss", "mse", "penalty"):
            assert both[epoch][key] == pytest.approx(single[epoch][key], rel=1e-5), (epoch, key)
    one, two = weights(root / "single"), weights(folders[0])
    assert list(one) == list(two)  # no "module." prefix from DDP
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["val_mse"] == pytest.approx(json.loads((root / "single" / "metrics.json").read_text())["val_mse"],
                                               rel=1e-5)


@pytest.mark.slow  # two ranks end to end; rank-0 gating stays covered by test_rank_zero_alone_writes
def test_only_rank_zero_writes(runs):
    root, folders, results = runs
    run_dir = folders[0]
    names = lambda folder: sorted(p.name.split(".out.")[0] for p in folder.iterdir())  # noqa: E731  (events.out.*)
    assert names(run_dir) == names(root / "single")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 3/3") == 1  # one writer of train.log
    assert "epoch 1/3" not in results[1][1]  # rank 1 keeps its info lines to itself


@pytest.mark.slow  # two ranks end to end; the stop agreement's fast counterpart is test_stop_flags_agree_in_one_process
def test_signal_on_one_rank_stops_both_and_resume_is_exact(runs, tmp_path):
    root, folders, _ = runs
    run_dir = tmp_path / "run"
    args = [*RUN, f"hydra.run.dir={run_dir}"]
    signalled = lambda: at_global_step(6, lambda: os.kill(os.getpid(), signal.SIGTERM))  # noqa: E731
    first = launch(args, tmp_path, [recording(tmp_path / "a0.jsonl"), recording(tmp_path / "a1.jsonl", signalled)])
    assert [code for code, _ in first] == [128 + signal.SIGTERM] * 2, first
    assert "after step 2 of epoch 2" in (run_dir / "train.log").read_text()  # 4 steps an epoch: global step 6
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["partial_epoch"]["batches_done"] == 2 and state["global_step"] == 6
    second = launch([*args, "trainer.resume=true"], tmp_path, [recording(tmp_path / "b0.jsonl"), None])
    assert [code for code, _ in second] == [0, 0], second
    uninterrupted, resumed = epochs(root / "rank0.jsonl"), epochs(tmp_path / "b0.jsonl")
    assert sorted(resumed) == [2, 3]
    for epoch in resumed:
        assert resumed[epoch] == uninterrupted[epoch]
    for key, value in weights(folders[0]).items():
        assert torch.equal(weights(run_dir)[key], value), key


@pytest.mark.slow  # two ranks end to end; the failure line's wording stays covered by test_failure_line
def test_a_dead_rank_ends_the_run_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    killed = lambda: at_global_step(3, lambda: os.kill(os.getpid(), signal.SIGKILL))  # noqa: E731
    started = time.monotonic()
    (code0, out0), (code1, _) = launch([*RUN, "trainer.epochs=50", f"hydra.run.dir={run_dir}"], tmp_path,
                                       [None, killed], timeout=120)
    assert time.monotonic() - started < 120 and code0 != 124  # no hang
    assert code1 == -signal.SIGKILL and code0 == 1, out0
    errors = [line for line in (run_dir / "train.log").read_text().splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "rank 0 of 2 stopped: another process of this run failed" in errors[0], errors
    assert "Traceback" not in out0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow  # two ranks end to end; nothing else covers it
def test_ranks_that_see_different_run_directories_refuse_together(runs, tmp_path):
    """A machine without the shared filesystem sees no checkpoint where rank 0 sees one."""
    root, folders, _ = runs

    def sees_nothing() -> None:
        import aeexp.training.run as run

        run.read_resume_checkpoint = lambda cfg, run_dir: None

    results = launch([*RUN, "trainer.resume=true", "trainer.epochs=4", f"hydra.run.dir={folders[0]}"], tmp_path,
                     [None, sees_nothing])
    assert [code for code, _ in results] == [2, 2], results
    assert "1 rank(s) see other files there than rank 0" in results[0][1]
    assert json.loads((folders[0] / "metrics.json").read_text())["epoch"] == 3  # left as it was


@pytest.mark.slow  # a real torchrun launch (10-25 s); the stop agreement runs forked in the tests above
def test_torchrun_passes_sigterm_to_every_rank(tmp_path):
    """SIGTERM to torchrun reaches both ranks through it: they stop after the same step,
    rank 0 saves last.pt and says so once."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "AEEXP_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "60"}
    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                                 str(free_port()), str(REPO / "train.py"), *RUN, "trainer.epochs=1000",
                                 f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        while not (run_dir / "metrics.json").exists() and torchrun.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        torchrun.send_signal(signal.SIGTERM)
        out, _ = torchrun.communicate(timeout=90)
    finally:
        torchrun.kill()
    assert torchrun.returncode != 0, out[-3000:]
    log = (run_dir / "train.log").read_text()
    assert log.count("SIGTERM received: saved") == 1, out[-3000:]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert f"after step {state['partial_epoch']['batches_done']} of epoch {state['partial_epoch']['epoch']}" in log


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nccl_on_one_gpu(tmp_path):
    """torchrun with one process on a GPU: NCCL, cuda:LOCAL_RANK, and the figures of a plain run."""
    env = {**os.environ, "AEEXP_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cuda = [*(a for a in RUN if a != "device=cpu"), "device=cuda", "trainer.epochs=2"]
    plain = subprocess.run([sys.executable, str(REPO / "train.py"), *cuda, f"hydra.run.dir={tmp_path / 'plain'}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port",
                             str(free_port()), str(REPO / "train.py"), *cuda, f"hydra.run.dir={tmp_path / 'ddp'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, ddp = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("plain", "ddp"))
    assert ddp["status"] == "completed"
    assert ddp["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert ddp["val_mse"] == pytest.approx(one["val_mse"], rel=1e-4)


# ------------------------------------------------------------------ fast: the pure parts
def test_shards_cover_each_row_once_as_tensor_split_cuts_them():
    for rows in (0, 1, 2, 5, 63, 64):
        for world in (1, 2, 3, 8):
            bounds = [distributed.shard_bounds(rows, rank, world) for rank in range(world)]
            expected = [len(part) for part in torch.tensor_split(torch.arange(rows), world)]
            assert [end - begin for begin, end in bounds] == expected
            assert [b for b, _ in bounds[1:]] == [e for _, e in bounds[:-1]] and bounds[-1][1] == rows


def test_ranks_from_env():
    assert distributed.ranks_from_env({}) == distributed.Ranks(0, 1, 0)
    ranks = distributed.ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ranks == distributed.Ranks(3, 4, 1) and not ranks.is_main


def test_one_process_is_left_alone():
    """Without torchrun every method is the identity: the same tensors, weight 1, nothing reduced."""
    ddp = distributed.Distributed(torch.device("cpu"))
    clean, noisy = torch.rand(5, 3), torch.rand(5, 3)
    a, b, weight = ddp.shard(clean, noisy)
    assert a is clean and b is noisy and weight == 1.0
    terms = torch.rand(4)
    assert ddp.batch_terms(terms, weight, None) is terms
    model = nn.Linear(2, 2)
    model.forward_parts = model.forward
    assert ddp.forward_parts(model, compile=False) == model.forward
    assert ddp.is_main and isinstance(ddp.run_log(lambda: "the run log"), str)


def test_rank_zero_alone_writes(tmp_path):
    waited = []
    quiet = Checkpoints(tmp_path, writes=False, after_write=lambda: waited.append(1))
    quiet.save({"w": torch.zeros(1)}, best=True)
    quiet.save_last({"w": torch.zeros(1)})
    assert not (tmp_path / "checkpoints").exists() and waited == [1, 1]  # it waits for rank 0 all the same
    silent = distributed.SilentRunLog()
    with silent:
        silent.write({"epoch": 2})
        silent.epoch(object(), None, True)
        silent.pictures({}, 1)
        assert silent.failed(RuntimeError("x")) == {"epoch": 2, "status": "failed", "error": "RuntimeError: x"}
    assert list(tmp_path.iterdir()) == []


def test_failure_line():
    ranks = distributed.Ranks(0, 2, 0)
    err = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:36005: "
                       "Connection reset by peer. This is typically caused by a remote worker hanging\nmore")
    line = distributed.describe_failure(err, ranks)
    assert line.startswith("rank 0 of 2 stopped: another process of this run failed or stopped answering (Read error")
    assert "\n" not in line
    assert distributed.describe_failure(RuntimeError("shapes do not match"), ranks) is None


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of this process alone (gloo), as torchrun with one process would make."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_whole_batch_methods_are_refused(one_rank_group):
    cpu = torch.device("cpu")
    for sparsity, key in (("batch_topk", "sparsity"), ("lifetime", "sparsity"), ("kl", "sparsity"),
                          ("topk", "sparsity.aux_weight")):
        with pytest.raises(ConfigError, match="not supported with DDP") as err:
            distributed.check_supported(OmegaConf.create({"sparsity": {"name": sparsity, "aux_weight": 0.03}}), cpu)
        assert err.value.key == key
    for allowed in ({"name": "topk", "aux_weight": 0}, {"name": "l1", "weight": 1e-3}, {"name": "none"}):
        distributed.check_supported(OmegaConf.create({"sparsity": allowed}), cpu)
    with pytest.raises(ConfigError, match="device.name"):
        distributed.check_supported(OmegaConf.create({"sparsity": {"name": "none"}}), torch.device("mps"))
    with pytest.raises(ConfigError, match="dropout"):
        distributed.check_no_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))


def test_a_repeated_signal_is_deferred_under_torchrun():
    """SLURM signals every process and torchrun passes the signal on again: one stop, not a kill."""
    from aeexp.training.interrupts import InterruptWatch

    fell_through = []
    previous = signal.signal(signal.SIGTERM, lambda *args: fell_through.append(args))
    try:
        with InterruptWatch(keep_handling=True) as watch:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert watch.signum == signal.SIGTERM and fell_through == []
        with InterruptWatch() as watch:  # one process: the second one acts as it would without aeexp
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert watch.signum == signal.SIGTERM and len(fell_through) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_flags_agree_in_one_process(one_rank_group):
    """The stop flag rides on the step's all-reduce and is read at the same step everywhere."""
    from aeexp.training.interrupts import InterruptWatch

    ddp, watch = distributed.Distributed(torch.device("cpu")), InterruptWatch()
    terms = ddp.batch_terms(torch.tensor([1.0, 2.0, 3.0, 4.0]), 1.0, watch)
    assert terms.tolist() == [1.0, 2.0, 3.0, 4.0] and not ddp.stop_requested(watch, 1)
    watch.signum = signal.SIGINT
    ddp.batch_terms(torch.zeros(4), 1.0, watch)
    assert ddp.stop_requested(watch, 2) and watch.signum == signal.SIGINT
    clean = torch.arange(10.0).reshape(5, 2)
    assert ddp.shard(clean, clean)[2] == 1.0  # world of one: all rows, weight 1
