"""Name -> builder registries, one per kind of component.

Configs name components by short strings (``model: {name: fc}``); a registry turns the
string into the class or function that builds it, in the manner of fvcore's ``Registry``
and timm's ``register_model``. A config node with ``_target_`` instead of ``name`` is
built by Hydra's ``instantiate`` so a user's own class, in their own module, works
without editing aeexp. That imports and calls whatever the node names, which is right for
the user's own config but not for one read back from a file: :mod:`aeexp.trust` refuses a
loaded config with a ``_target_`` unless the caller opted in, before anything reaches
:meth:`Registry.build`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf


class RegistryError(KeyError):
    """An unknown or duplicate name; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """Maps short names to builders for one kind of component (models, optimizers, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._schemas: dict[str, type | None] = {}

    def register(
        self, name: str, schema: type | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@MODELS.register("fc", schema=FCModelConfig)`` above a builder.

        ``schema`` is the dataclass that a config node naming this builder must fit
        (see :mod:`aeexp.config`); it is how typos and out-of-range values are caught
        before any work starts.
        """

        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered "
                    f"(by {self._builders[name].__module__}.{self._builders[name].__qualname__})"
                )
            self._builders[name] = builder
            self._schemas[name] = schema
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise RegistryError(
                f"unknown {self.kind} '{name}'; registered {self.kind} names: {', '.join(self.names())}"
            )
        return self._builders[name]

    def schema(self, name: str) -> type | None:
        self.get(name)
        return self._schemas[name]

    def build(self, node: Mapping[str, Any] | DictConfig, **context: Any) -> Any:
        """Build from a config node: by its ``name``, or by ``_target_`` for user classes.

        ``context`` carries what the config cannot know (the data's shape, the model's
        parameters) and is passed as keyword arguments to the builder.
        """
        params = _to_dict(node)
        if "_target_" in params:
            from hydra.utils import instantiate

            params.pop("name", None)
            return instantiate(params, **context, _convert_="all")
        if "name" not in params:
            raise RegistryError(
                f"{self.kind} config needs 'name' (one of: {', '.join(self.names())}) "
                f"or '_target_' (a dotted path to your own class)"
            )
        builder = self.get(params.pop("name"))
        return builder(**params, **context)


def _to_dict(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


ACTIVATIONS = Registry("activation")
MODELS = Registry("model")
SPARSITY = Registry("sparsity")
NOISE = Registry("noise")
DATASETS = Registry("dataset")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
TRACKERS = Registry("logger")  # the logger group: where a run reports (aeexp.training.trackers), several at once

ALL_REGISTRIES = (MODELS, SPARSITY, NOISE, DATASETS, OPTIMIZERS, SCHEDULERS, ACTIVATIONS)
