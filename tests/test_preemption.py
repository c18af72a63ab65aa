"""SLURM's warning before a time limit or a preemption (SIGUSR2): the job saves its place
inside the epoch first, then submitit's own handler (requeue) runs, then training stops."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import small_run

from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run import run_training
from aeexp.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")


def test_usr2_saves_the_place_in_the_epoch_before_submitits_requeue_handler_runs(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    seen = []

    def submitit_requeue(signum, frame):  # stands in for submitit's checkpoint_and_try_requeue
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        seen.append((signum, state["epoch"], state["partial_epoch"]["batches_done"]))

    real_step, calls = Trainer.train_step, {"n": 0}

    def step_then_usr2(self, clean):
        calls["n"] += 1
        if calls["n"] == 11:  # inside epoch 2 (8 batches of 64 per epoch)
            os.kill(os.getpid(), signal.SIGUSR2)  # a real signal, delivered to our handler
        return real_step(self, clean)

    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    monkeypatch.setattr(Trainer, "train_step", step_then_usr2)
    try:
        with pytest.raises(TrainingInterrupted, match="SIGUSR2.*epoch 2 after step 3|epoch 2 after step 3"):
            run_training(small_run("trainer.epochs=3"), run_dir)
        assert signal.getsignal(signal.SIGUSR2) is submitit_requeue  # handed back when training ends
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [(signal.SIGUSR2, 1, 3)]  # submitit's handler ran once, after last.pt held the place
