"""A user's sparsity class and its optional ``bind(code_features, batch_size)``
(docs/guide.md, section 3): build_model calls it once the code's width is known, and what it
raises, or a ``bind`` that is no method, ends as one ConfigError naming the ``_target_``.

The refusals of a class that lacks a method are in test_bad_input.py's battery, and a bind
that raises ConfigError (the guide's TopFraction) in test_guide.py.
"""

from __future__ import annotations

import pytest
from conftest import small_run
from omegaconf import OmegaConf

from aeexp.config import ConfigError
from aeexp.models.factory import build_model
from aeexp.sparsity import Sparsity

SHAPE = (1, 28, 28)


class RecordsBind(Sparsity):
    def __init__(self):
        super().__init__()
        self.bound = None

    def bind(self, code_features, batch_size):
        self.bound = (code_features, batch_size)


class BindRaisesValueError(Sparsity):
    def bind(self, code_features, batch_size):
        raise ValueError(f"needs at least 100 code entries,\n got {code_features}")


class BindIsNotAMethod(Sparsity):
    bind = 3


def with_sparsity(cls: type, *overrides: str):
    cfg = small_run("model.latent_dim=16", *overrides)
    cfg.sparsity = OmegaConf.create({"_target_": f"{cls.__module__}.{cls.__qualname__}"})
    return cfg


def test_bind_gets_the_code_width_and_the_batch_size():
    model = build_model(with_sparsity(RecordsBind, "trainer.batch_size=32"), SHAPE)
    assert model.bottleneck.bound == (16, 32)
    assert model.training  # the width was measured in eval mode, the model given back as it was


def test_bind_raising_something_else_than_ConfigError_is_one_line_naming_the_target():
    with pytest.raises(ConfigError) as info:
        build_model(with_sparsity(BindRaisesValueError), SHAPE)
    assert info.value.key == "sparsity._target_"
    message = str(info.value)
    assert "\n" not in message
    assert "BindRaisesValueError.bind(16, 64) raised ValueError: needs at least 100 code entries, got 16" in message
    assert "docs/guide.md, section 3" in message


def test_a_bind_that_is_not_a_method_is_refused():
    with pytest.raises(ConfigError, match=r"sparsity._target_: BindIsNotAMethod.bind is not callable \(int\)"):
        build_model(with_sparsity(BindIsNotAMethod), SHAPE)


def test_aeexps_own_bind_refusal_is_unchanged():
    with pytest.raises(ConfigError, match=r"sparsity.k: got 32, allowed: 1 to the code size, 16"):
        build_model(small_run("model.latent_dim=16", "sparsity=topk", "sparsity.k=32"), SHAPE)

