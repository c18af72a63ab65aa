"""When a run has diverged: a non-finite loss, or a finite but absurd one.

Adam with an absurd learning rate gives finite losses far above where the run started
(lr=1e6 on the fc model: about 1e31 after ten steps, never NaN), so a loss more than
``trainer.divergence_factor`` times the stage's first batch loss stops the run too.
"""

from __future__ import annotations

import math


class DivergenceError(FloatingPointError):
    """The loss became non-finite or absurdly large; the message names epoch and step."""


def check_divergence(loss: float, reference: float, factor: float | None, where: str, lr: float) -> None:
    """Raise DivergenceError unless ``loss`` is finite and within ``factor`` x ``reference``."""
    too_large = factor is not None and reference > 0 and loss > factor * reference
    if math.isfinite(loss) and not too_large:
        return
    raise DivergenceError(
        f"training diverged in {where}: loss {loss:.4g} against {reference:.4g} at the first step; try a lower "
        f"optimizer.lr (now {lr:g}), or trainer.grad_clip. best.pt is untouched."
    )
