"""Training N members at once: one stacked forward and backward per batch, then each
member's optimizer step (all of them as one set of operations on the stacks where they are
Adam/AdamW differing only in learning rate: :mod:`aeexp.stacked.optim`), and each member's
own end of epoch (validation, scheduler, checkpoints, metrics.json, TensorBoard) exactly as
its lone run would do it.

Members move in lock-step, one batch of each per step (each member's batches come from
its own shuffle generator, so a member sees the batches of its lone run). A member that
diverges or whose scheduler ends it stops alone: its weights stay as they are, it is left
out of further steps, and its run records why, as a lone run's would; the others go on.

The per-batch step is :meth:`Trainer.train_step` for N members; the end of an epoch is
each member's own :meth:`Trainer.close_epoch`, its files and :meth:`Trainer.log_epoch`, as
in :meth:`Trainer._run_epoch` (the files of all members written in parallel threads).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch import nn

from aeexp.data.images import epoch_order, index_batches, to_float
from aeexp.stacked.members import Member
from aeexp.stacked.optim import StackedAdam
from aeexp.sparsity.base import Sparsity
from aeexp.stacked.weights import StackedWeights
from aeexp.training import model_hooks
from aeexp.training.interrupts import InterruptWatch, TrainingInterrupted
from aeexp.training.run_log import EpochRecord

log = logging.getLogger(__name__)


def _has(bottleneck: nn.Module, method: str) -> bool:
    """Whether a sparsity module has its own ``penalty`` / ``auxiliary`` (Sparsity's are zero)."""
    return getattr(type(bottleneck), method, None) is not getattr(Sparsity, method)


def step_optimizers(optimizers: list[torch.optim.Optimizer]) -> None:
    """``optimizer.step()`` for each, in one call for those of the same class and settings
    (members that differ only in seed, or share a learning rate).

    The first of such a set steps the others' parameters with its own: for that call its one
    parameter group lists theirs too and its state holds theirs (the same state objects,
    handed back afterwards, so each optimizer's ``state_dict`` is what its own step would have
    made). Optimizers update each parameter from its own gradient and state alone, so this is
    each one's step, in fewer calls (one foreach kernel group instead of one per member).
    """
    sets: dict[tuple, list[torch.optim.Optimizer]] = {}
    for optimizer in optimizers:
        if len(optimizer.param_groups) != 1:
            optimizer.step()
            continue
        settings = sorted((k, repr(v)) for k, v in optimizer.param_groups[0].items() if k != "params")
        sets.setdefault((type(optimizer), tuple(settings)), []).append(optimizer)
    for lead, *others in sets.values():
        group = lead.param_groups[0]
        own = group["params"]
        borrowed = [p for other in others for p in other.param_groups[0]["params"]]
        for other in others:
            lead.state.update(other.state)
        group["params"] = own + borrowed
        try:
            lead.step()
        finally:
            group["params"] = own
            for other in others:
                for p in other.param_groups[0]["params"]:
                    if p in lead.state:
                        other.state[p] = lead.state.pop(p)
                other._opt_called = True  # what its own step() tells an LR scheduler


def _stacked_batches(trainers, orders: list, start: int):
    """Each step's batch of every member, (N, B, ...): member i's batch is the one its lone
    run's ``index_batches`` yields at that step. Members sharing one in-memory training set
    are gathered in one ``index_select`` per step over their orders interleaved batch by batch
    (one copy instead of N gathers and a stack); other members' batches are stacked."""
    images, size = trainers[0].data.train_images, trainers[0].settings.batch_size
    if not (isinstance(images, torch.Tensor) and all(t.data.train_images is images and t.settings.batch_size == size
                                                     for t in trainers)):
        per_member = [index_batches(t.data.train_images, t.settings.batch_size, order, start=start)
                      for t, order in zip(trainers, orders)]
        yield from (torch.stack(batches) for batches in zip(*per_member))
        return
    stacked, full, together = torch.stack(orders), len(images) // size * size, size * len(trainers)
    interleaved = torch.cat([stacked[:, :full].unflatten(1, (-1, size)).transpose(0, 1).flatten(),
                             stacked[:, full:].flatten()])  # the short last batch of each, together
    for begin in range(start * together, len(interleaved), together):
        yield to_float(images.index_select(0, interleaved[begin:begin + together])).unflatten(0, (len(trainers), -1))


def _save(trainer, improved: bool, state: dict) -> BaseException | None:
    """A member's files of the epoch, as Trainer._run_epoch writes them; the error, if any."""
    try:
        trainer.checkpoints.save(state, best=improved, on_best_saved=lambda: trainer.run_log.best_saved(trainer.metrics))
        trainer.run_log.write(trainer.metrics)
    except Exception as err:  # noqa: BLE001  (reported for that member on the main thread)
        return err
    return None


def _log_epoch(trainer, record: EpochRecord, improved: bool, val: dict, error: BaseException | None) -> None:
    """Trainer._run_epoch after its save: the error of the save, else the epoch's log."""
    if error is not None:
        raise error
    trainer.log_epoch(record, improved, val)


class StackedTraining:
    """Fit every member; each member's ``outcome`` ends as its final metrics or the
    exception that ended it (a lone run's ``fit`` would have raised it)."""

    def __init__(self, members: list[Member], stop_requested=None):
        self.members = list(members)
        self.interrupts = InterruptWatch(poll=stop_requested)
        self.weights: StackedWeights | None = None
        self.adam: StackedAdam | None = None  # every member's Adam step at once, where their optimizers allow it
        self.stacked: list[Member] = []  # the members self.weights holds, in its order

    # ------------------------------------------------------------------ run
    def fit(self) -> list[Member]:
        with ExitStack() as stack:
            stack.enter_context(self.interrupts)
            for member in self.members:
                stack.enter_context(member.trainer.run_log)
                with member.scope():
                    self._guard(member, lambda m: model_hooks.initialize_from_data(
                        m.trainer.model, m.trainer.data.train_images, fresh=m.trainer.global_step == 0))
                if not member.done and member.trainer._stage_done():
                    self._finish(member)
            while True:
                running = [m for m in self.members if not m.done]
                if not running:
                    break
                # Members in the same place (epoch, batch) train together; after a resume from
                # different places the ones behind catch up first.
                place = min(self._place(m) for m in running)
                self._run_epoch([m for m in running if self._place(m) == place], place[0] + 1)
        return self.members

    @staticmethod
    def _place(member: Member) -> tuple[int, int]:
        partial = member.trainer.partial_epoch
        started = partial["batches_done"] if partial is not None and partial["epoch"] == member.trainer.epoch + 1 else 0
        return member.trainer.epoch, started

    def _guard(self, member: Member, action) -> None:
        """Run ``action(member)``; an exception ends that member alone, recorded as a lone
        run's ``fit`` records it (``metrics.json`` failed, with the error)."""
        try:
            action(member)
        except TrainingInterrupted as err:
            member.outcome = err
        except Exception as err:  # noqa: BLE001  (the member's run fails, the others go on)
            member.outcome = err
            member.trainer.metrics = member.trainer.run_log.failed(err)
            log.error("%s: %s", member.trainer.run_dir.name, err)

    def _restack(self, members: list[Member]) -> StackedWeights:
        if [id(m) for m in members] != [id(m) for m in self.stacked]:
            self.weights = StackedWeights([m.trainer.model for m in members])
            self.adam = StackedAdam.build([m.trainer.optimizer for m in members], self.weights)
            self.stacked = list(members)
        return self.weights

    # ---------------------------------------------------------------- epoch
    def _run_epoch(self, members: list[Member], epoch: int) -> None:
        """Train every member one epoch together, then close each member's epoch: validate,
        step the scheduler, save, log. The members' checkpoints and metrics.json are written
        in parallel threads (each member's in its lone run's order: best.pt, last.pt, then
        metrics.json): a lone run waits for its files to reach the disk, and N members would
        wait N times as long one after another. Training resumes once all have landed."""
        start = time.perf_counter()
        train = self._train_epoch(members, epoch)
        train_seconds = time.perf_counter() - start
        closing = []  # (member, (record, improved, val), the checkpoint's state taken in its random streams)
        for member, figures in zip(members, train):
            if not member.done:  # epoch_seconds: the stacked pass plus this member's own end of epoch
                with member.scope():
                    self._guard(member, lambda m: closing.append(
                        (m, m.trainer.close_epoch(epoch, figures, start, train_seconds), m.trainer.state_dict())))
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(closing)))) as pool:
            errors = list(pool.map(lambda item: _save(item[0].trainer, item[1][1], item[2]), closing))
        for (member, (record, improved, val), _), error in zip(closing, errors):
            with member.scope():
                self._guard(member, lambda m: _log_epoch(m.trainer, record, improved, val, error))
            if not member.done and member.trainer._stage_done():
                self._finish(member)

    def _finish(self, member: Member) -> None:
        def finish(m: Member) -> None:
            m.trainer.metrics["status"] = "completed"
            m.trainer.run_log.finish(m.trainer.cfg, m.trainer.metrics)
            m.outcome = m.trainer.metrics
        with member.scope(hydra=True):
            self._guard(member, finish)

    # ---------------------------------------------------------------- steps
    def _train_epoch(self, members: list[Member], epoch: int) -> list[dict[str, float] | None]:
        """One pass of every member over its training set, in its own fresh order (or the
        rest of an interrupted pass); returns each member's mean loss terms (None for a
        member that stopped inside the epoch)."""
        trainers = [m.trainer for m in members]
        weights = self._restack(members)
        device = trainers[0].device
        begin = self._place(members[0])[1]
        sums = torch.zeros(len(members), 4, dtype=torch.float64, device=device)
        shuffle_states, orders = [], []
        for i, t in enumerate(trainers):
            t.model.train()
            if begin:
                t.shuffle_generator.set_state(t.partial_epoch["shuffle"].cpu())
                sums[i] = t.partial_epoch["sums"].to(device)
            t.partial_epoch = None
            shuffle_states.append(t.shuffle_generator.get_state())
            orders.append(epoch_order(t.data.train_images, t.shuffle_generator, device))
        noisy = [t.noise.active for t in trainers]
        step = begin
        for step, clean in enumerate(_stacked_batches(trainers, orders, begin), start=begin + 1):
            live = [i for i, m in enumerate(members) if not m.done]
            if not live:
                break
            terms = self._step(members, weights, clean, live, noisy)
            sums += terms.to(torch.float64) * clean.shape[1]
            look = device.type == "cpu" or step % 10 == 0  # as Trainer.train_epoch: a GPU syncs every few steps
            losses = terms[:, 0].tolist() if look or any(t.reference_loss is None for t in trainers) else None
            for i in live:
                t = trainers[i]
                t.run_log.step(t.global_step, terms[i], t.optimizer)
                if losses is not None and (look or t.reference_loss is None):
                    self._guard(members[i], lambda m: m.trainer._check_divergence(losses[i], epoch, step))
            if self.interrupts.requested:
                self._stop_inside_epoch(members, epoch, step, shuffle_states, sums)
        results: list[dict[str, float] | None] = []
        for i, member in enumerate(members):
            loss, mse, penalty, aux = (sums[i] / len(trainers[i].data.train_images)).tolist()
            if not member.done:
                self._guard(member, lambda m: m.trainer._check_divergence(loss, epoch, step))
            results.append(None if member.done else {"loss": loss, "mse": mse, "penalty": penalty, "aux": aux})
        return results

    def _step(self, members: list[Member], weights: StackedWeights, clean: torch.Tensor, live: list[int],
              noisy: list[bool]) -> torch.Tensor:
        """Trainer.train_step for every member at once; returns (members, 4): each member's
        detached (loss, mse, penalty, aux)."""
        if any(noisy):  # each member's noise from its own random stream, as alone
            inputs = []
            for member, batch, active in zip(members, clean, noisy):
                if active:
                    with member.scope():
                        batch = member.trainer.noise(batch)
                inputs.append(batch)
            inputs = torch.stack(inputs)
        else:
            inputs = clean
        x_hat, z, code = weights.forward_parts(inputs)
        # Each member's MSE, penalty and auxiliary loss as its lone run computes them, on its
        # slice (unbind, not indexing: its backward is one stack of the members' gradients).
        # On a CPU the MSE too: a slice stays in cache, where a reduction over the whole stack
        # costs extra passes over memory that were a third of a step; on a GPU one reduction
        # over the stack is fewer kernel launches.
        if clean.device.type == "cpu":
            mse = torch.stack([F.mse_loss(xh.float(), c) for xh, c in zip(x_hat.unbind(), clean.unbind())])
        else:
            mse = F.mse_loss(x_hat.float(), clean, reduction="none").flatten(1).mean(1)
        bottlenecks = [m.trainer.model.bottleneck for m in members]
        if any(_has(b, "penalty") or _has(b, "auxiliary") for b in bottlenecks):
            extras = []
            for member, zi, ci, cl, xh in zip(members, z.unbind(), code.unbind(), clean.unbind(), x_hat.unbind()):
                model = member.trainer.model
                penalty = model.bottleneck.penalty(zi.float())
                aux = model.bottleneck.auxiliary(ci, cl - xh.float(), model.decode)
                extras.append(torch.stack([penalty, aux]))
            penalty, aux = torch.stack(extras).unbind(1)
        else:  # zero, as Sparsity's own penalty and auxiliary are
            penalty = aux = torch.zeros_like(mse)
        terms = torch.stack([mse + penalty + aux, mse, penalty, aux], dim=1)
        weights.zero_grad()
        terms[live, 0].sum().backward()  # member i's gradient is its own loss's: the others do not depend on its slice
        weights.hand_out_grads(live)
        trainers = [members[i].trainer for i in live]
        for t in trainers:
            model_hooks.before_optimizer_step(t.model)
            if t.settings.grad_clip is not None:
                nn.utils.clip_grad_norm_(t.model.parameters(), t.settings.grad_clip)
        optimizers = [t.optimizer for t in trainers]
        if self.adam is not None and [id(o) for o in optimizers] == [id(o) for o in self.adam.optimizers]:
            self.adam.step()  # every member live: one step on the stacks
        else:
            step_optimizers(optimizers)
        for t in trainers:
            model_hooks.after_optimizer_step(t.model)
            t.global_step += 1
        return terms.detach()

    def _stop_inside_epoch(self, members: list[Member], epoch: int, step: int, shuffle_states: list[torch.Tensor],
                           sums: torch.Tensor) -> None:
        """A signal: every running member saves its place in last.pt and stops, as alone."""
        running = [i for i, member in enumerate(members) if not member.done]
        for i in running:
            member = members[i]
            if i != running[-1]:  # one member passes the signal on (InterruptWatch.pass_on), as one lone run would
                member.trainer.interrupts = InterruptWatch()
                member.trainer.interrupts.signum, member.trainer.interrupts.external = self.interrupts.signum, True
            else:
                member.trainer.interrupts = self.interrupts
            with member.scope():
                self._guard(member, lambda m: m.trainer._stop_inside_epoch(epoch, step, shuffle_states[i],
                                                                           sums[i].clone()))
