"""Resuming from a checkpoint written before a schema gained a key."""

from __future__ import annotations

import pytest
from conftest import small_run
from omegaconf import OmegaConf

from aeexp.config import ConfigError, validate
from aeexp.training.resume_settings import compare_resume_settings


def saved_without(cfg, group: str, key: str) -> str:
    """The checkpoint's config text as an older aeexp wrote it: without ``group.key``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    del plain[group][key]
    return OmegaConf.to_yaml(plain)


def test_a_key_added_since_the_checkpoint_reads_as_its_default():
    cfg = validate(small_run("sparsity=topk", "sparsity.k=8"))
    assert compare_resume_settings(saved_without(cfg, "sparsity", "relu"), cfg, "last.pt") == {}


def test_a_key_added_since_the_checkpoint_set_to_another_value_is_still_a_change():
    cfg = validate(small_run("sparsity=topk", "sparsity.k=8", "sparsity.relu=true"))
    with pytest.raises(ConfigError, match=r"sparsity\.relu: False in the checkpoint, True now"):
        compare_resume_settings(saved_without(cfg, "sparsity", "relu"), cfg, "last.pt")
