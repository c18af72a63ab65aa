"""Defaults live in one place: a YAML option and its schema agree wherever both give a value.

The rule, per config group that has a schema:

* Registry groups (model, sparsity, noise, dataset, optimizer, scheduler): the option file
  whose name is the registered name (``sparsity/topk.yaml`` <-> ``"topk"``) is that
  component's defaults written out, so every key it gives a literal value must equal the
  default of the schema registered with that name. A file whose name is not a registered
  name (``model/deep_fc.yaml``, ``model/mlp.yaml`` and ``model/conv_fc.yaml`` build on the
  ``fc`` / ``conv`` schemas) is a variant: its values are the point of it and are exempt.
* device, trainer, paths (schemas in :mod:`aeexp.config`): the option ``conf/config.yaml``
  picks by default (``device: auto``, ``trainer: default``, ``paths: default``) must equal
  the schema; the others (``device/cpu.yaml``, ...) are variants.

Every file, variant or not, may only use the keys of its schema.

Keys whose YAML value is an interpolation (``root: ${oc.select:paths.data_dir,data}`` in the
dataset files, everything in ``paths/default.yaml``) are not plain defaults: they depend on
other groups or the environment, which a dataclass default cannot, so they are not compared.
``name`` is not compared either: for registry groups it is the registry key that picks the
schema (checked here to equal the file's name instead), and one schema may serve several
names (``TorchvisionDatasetConfig`` for mnist, fashion_mnist and kmnist).

Values are compared after merging the YAML into the schema, so ``1`` and ``1.0`` for a float
field, or a conv descriptor that leaves ``pool`` at its default, compare by what they mean.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from aeexp.config import FIXED_GROUPS, REGISTRY_GROUPS
from conftest import CONF_DIR


def _group_defaults() -> dict[str, str]:
    """The option each group gets when the command line names none (conf/config.yaml)."""
    chosen = {}
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").defaults:
        if isinstance(entry, DictConfig):
            for group, option in entry.items():
                chosen[str(group)] = option
    return chosen


DEFAULT_OPTIONS = _group_defaults()
OPTION_FILES = sorted(
    (group, path.stem)
    for group in (*REGISTRY_GROUPS, *FIXED_GROUPS)
    for path in (CONF_DIR / group).glob("*.yaml")
)


def _schema_for(group: str, option: str, node: DictConfig) -> tuple[type | None, bool]:
    """(schema, compared): the file's schema and whether its values must equal its defaults."""
    if group in FIXED_GROUPS:
        return FIXED_GROUPS[group], option == DEFAULT_OPTIONS.get(group)
    registry = REGISTRY_GROUPS[group]
    name = node.get("name")
    assert name in registry, (
        f"conf/{group}/{option}.yaml: name={name!r} is not a registered {registry.kind} "
        f"(registered: {', '.join(registry.names())})"
    )
    if option in registry:
        assert name == option, (
            f"conf/{group}/{option}.yaml: its file name is the registered name {option!r}, "
            f"so it must describe that component, but it has name={name!r}"
        )
    return registry.schema(name), option in registry


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node


def test_every_group_with_a_schema_has_option_files():
    assert {group for group, _ in OPTION_FILES} == {*REGISTRY_GROUPS, *FIXED_GROUPS}
    for group in FIXED_GROUPS:
        assert (CONF_DIR / group / f"{DEFAULT_OPTIONS[group]}.yaml").is_file(), group


def test_the_rule_compares_the_registered_and_default_options():
    """Guards the test itself: the files that must match are compared, variants are not."""
    compared = set()
    for group, option in OPTION_FILES:
        node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
        if _schema_for(group, option, node)[1]:
            compared.add(f"{group}/{option}")
    assert {"sparsity/topk", "optimizer/adamw", "model/fc", "model/conv", "dataset/mnist",
            "device/auto", "trainer/default", "paths/default"} <= compared
    assert not {"model/deep_fc", "model/mlp", "model/conv_fc", "device/cpu"} & compared


@pytest.mark.parametrize(("group", "option"), OPTION_FILES, ids=[f"{g}/{o}.yaml" for g, o in OPTION_FILES])
def test_option_file_matches_its_schema_defaults(group, option):
    path = CONF_DIR / group / f"{option}.yaml"
    node = OmegaConf.load(path)
    schema, compared = _schema_for(group, option, node)
    if schema is None:  # registered without a schema: the name is all it takes
        assert set(node) == {"name"}, f"{path.relative_to(CONF_DIR.parent)}: keys {sorted(node)} for a schema-less component"
        return
    schema_keys = {f.name for f in fields(schema)}
    unknown = sorted(set(node) - schema_keys)
    assert not unknown, f"{path.relative_to(CONF_DIR.parent)}: keys {unknown} are not fields of {schema.__name__}"
    if not compared:
        return
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
    # The YAML merged into the schema: values typed as the schema types them (int -> float,
    # list items filled with their descriptor's defaults); no __post_init__ runs here.
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), node), resolve=False)
    mismatches = []
    for key in node:
        if key == "name" or OmegaConf.is_interpolation(node, key):
            continue
        if merged[key] != defaults[key]:
            mismatches.append(
                f"  {key}: yaml {_plain(node[key])!r} (as the schema reads it: {merged[key]!r}), "
                f"{schema.__name__} default {defaults[key]!r}"
            )
    assert not mismatches, (
        f"{path.relative_to(CONF_DIR.parent)} differs from the defaults of {schema.__name__}:\n"
        + "\n".join(mismatches)
        + "\n(one value, one place: make the schema default equal the YAML, or the YAML the schema)"
    )


# ---------------------------------------------- the builders' own defaults, where they keep any
# A builder called only through its registry gets every key from the checked node, so it
# takes none (build_conv). Those that Python code calls with a few keys keep defaults, read
# from the schema where the field has a plain default; the rest (list defaults written as
# tuples) must at least say the same.


def _builders() -> list[tuple[str, Callable[..., Any], type]]:
    from aeexp.data.datasets import TorchvisionDatasetConfig, load_torchvision

    found = [(f"{group}={name}", registry.get(name), registry.schema(name))
             for group, registry in REGISTRY_GROUPS.items() for name in registry.names() if registry.schema(name)]
    # mnist, fashion_mnist and kmnist are registered as lambdas around load_torchvision.
    found.append(("dataset=load_torchvision", load_torchvision, TorchvisionDatasetConfig))
    return found


BUILDERS = _builders()


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


@pytest.mark.parametrize(("label", "builder", "schema"), BUILDERS, ids=[label for label, _, _ in BUILDERS])
def test_builder_signature_defaults_equal_the_schema(label, builder, schema):
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
    mismatches = [
        f"  {p.name}: signature default {p.default!r}, {schema.__name__} default {defaults[p.name]!r}"
        for p in inspect.signature(builder).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name in defaults
        and _as_lists(p.default) != defaults[p.name]
    ]
    assert not mismatches, f"{label} ({builder.__qualname__}) disagrees with its schema:\n" + "\n".join(mismatches)
