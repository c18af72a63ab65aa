"""What the command-line entry points share: which errors are the user's to fix, and a
pre-flight check of the command line that turns Hydra's silent or multi-line refusals into
one :class:`ConfigError` line before Hydra composes anything.

:func:`check_command_line` reads the overrides as Hydra receives them (``sys.argv[1:]``)
with Hydra's own override parser and refuses, naming the key, the value and what is allowed:

- an option of a config group that no config folder holds (``experiment=nosuch`` and
  ``hparams_search=nosuch`` are ``optional`` in ``conf/config.yaml``, so Hydra would ignore
  them silently; ``model=nosuch`` gets Hydra's many-line message);
- ``group.key=value`` where ``key`` is no field of that group's schema (Hydra's "not in
  struct"), with the valid keys, as ``+group.key=value`` gets from :func:`aeexp.config.validate`;
- a few more of Hydra's own refusals said in one line: an override that does not parse, a
  sweep (``a,b``) without ``-m``, ``+key`` for a key already set, ``~key`` for a key not set,
  an unknown top-level key, an unknown ``--option``, a ``--config-dir`` that is not a folder.

Where it cannot be sure (a ``_target_`` node, a config it cannot read, ``hydra.searchpath``,
a ``glob``/``range`` sweep) it refuses nothing: Hydra and :func:`aeexp.config.validate`
still check later.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from aeexp.config import FIXED_GROUPS, REGISTRY_GROUPS, ConfigError, NamedConfig
from aeexp.data.datasets import DataNotFoundError
from aeexp.registry import RegistryError
from aeexp.checkpoints import CheckpointError

# Raised for bad input; entry points print these as one line instead of a traceback.
USER_ERRORS = (ConfigError, RegistryError, DataNotFoundError, CheckpointError, FloatingPointError)

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def check_command_line(argv: Sequence[str], conf_dir: Path | str, config_name: str = "config") -> None:
    """Refuse, as a ConfigError, what Hydra would refuse or silently ignore on this command line.

    ``argv``: the arguments as the script gets them (``sys.argv[1:]``); ``conf_dir``: the
    script's config folder (``config_path`` of its ``@hydra.main``); ``config_name``: its
    primary config. ``--config-dir``/``-cd``, ``--config-path``/``-cp`` and
    ``--config-name``/``-cn`` on the command line are honoured as Hydra honours them.
    """
    args, unknown = _parse_args(list(argv))
    if args is None:
        return  # Hydra's argparse will say what is wrong
    for option in unknown:
        if option.startswith("-"):
            raise ConfigError(option.split("=", 1)[0], "unknown option; Hydra's options: -m/--multirun, "
                              "--config-dir/-cd, --config-path/-cp, --config-name/-cn, --cfg/-c, --info/-i, "
                              "--help/-h, --hydra-help (python <script> --help)")
    if unknown:  # overrides after an option: argparse takes overrides only before or after all options
        raise ConfigError(unknown[0].split("=", 1)[0], f"got {unknown[0]!r} after an option such as -m, which "
                          "Hydra's parser refuses; allowed: the options (-m, --config-dir, ...) before or after all "
                          "the overrides, not between them: python <script> -m key=value ...")
    primary = Path(conf_dir)
    if args.config_path:
        path = Path(args.config_path)
        if args.config_path.startswith("pkg://"):
            return  # a package's configs: leave them to Hydra
        primary = path if path.is_absolute() else primary.parent / path
        if not primary.is_dir():
            raise ConfigError("--config-path", f"got {args.config_path!r}: no such folder ({primary}); it replaces "
                              "the script's config folder (absolute, or relative to the script)")
    dirs = [primary]
    if args.config_dir:
        extra = Path(args.config_dir).absolute()
        if not extra.is_dir():
            raise ConfigError("--config-dir", f"got {args.config_dir!r}: no such folder (it adds a folder of "
                              "config groups to the search path)")
        dirs.append(extra)
    config = _Configs(dirs, args.config_name or config_name)
    if args.config_name and config.primary is None and not any((d / f"{args.config_name}.yaml").is_file() for d in dirs):
        names = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
        raise ConfigError("--config-name", f"got {args.config_name!r}, allowed: one of {', '.join(names)} "
                          f"(the YAML files in {', '.join(map(str, dirs))})")
    overrides = _parse_overrides(args.overrides)
    multirun = bool(args.multirun) or any(
        o.key_or_group == "hydra.mode" and str(_plain(o)).upper() == "MULTIRUN" for o in overrides)
    if any(o.key_or_group == "hydra.searchpath" for o in overrides):
        return  # more config folders than we know of
    choices = _group_choices(overrides, config)
    targets = {o.key_or_group.split(".")[0] for o in overrides if o.key_or_group.endswith("._target_")}
    for o in overrides:
        key = o.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if o.is_sweep_override() and not multirun and not o.is_delete():
            raise ConfigError(key, f"got {o.input_line.split('=', 1)[-1]!r}: several values sweep only with -m "
                              "(--multirun); a list is key=[a,b], a string with commas is quoted: key='a,b'")
        if o.package or "/" in key:
            continue
        if "." not in key and "[" not in key:
            if config.is_group(key):
                _check_group_choice(o, config)
            else:
                _check_top_level(key, _kind(o), config)
            continue
        head, field = _split_key(key)
        if config.is_group(head):
            if head not in targets:
                _check_group_key(o, head, field, choices, config)
        else:
            _check_node_key(o, head, field, config)


def preflight(argv: Sequence[str], conf_dir: Path | str, config_name: str = "config",
              logger: Optional[str] = "train") -> None:
    """:func:`check_command_line`, and on a ConfigError its one line on stderr and exit status
    2; for entry points to call before their ``@hydra.main`` function. ``logger``: the name
    in the line's ``[time][name][ERROR] - `` prefix, as the script's Hydra log lines have
    it (None: the message alone, as ``evaluate.py``'s console logging prints it)."""
    try:
        check_command_line(argv, conf_dir, config_name)
    except ConfigError as err:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"[{stamp},000][{logger}][ERROR] - {err}" if logger else str(err), file=sys.stderr, flush=True)
        logging.shutdown()
        sys.exit(2)


# ------------------------------------------------------------------------ parsing
def _parse_args(argv: list[str]):
    """Hydra's own argument parser; its refusals (``--cfg nosuch``) as one ConfigError."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> None:
        raise ConfigError("", message)

    parser.error = refuse  # type: ignore[method-assign]
    try:
        return parser.parse_known_args(argv)
    except ConfigError as err:
        match = re.match(r"argument ([^/:]+)(?:/[^:]*)?: (.*)", err.message)
        if match:
            raise ConfigError(match.group(1), match.group(2) + " (python <script> --help lists the options)") from None
        raise ConfigError("", f"{err.message} (python <script> --help lists the options)") from None
    except SystemExit:
        return None, []


def _parse_overrides(lines: Iterable[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for line in lines:
        try:
            parsed.extend(parser.parse_overrides([line]))
        except HydraException as err:
            key = line.split("=", 1)[0].lstrip("+~") if "=" in line else line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(key, f"cannot parse {line!r} ({reason}); allowed: key=value in Hydra's override "
                              f"grammar, with quotes around values holding spaces or brackets ({GRAMMAR})") from None
    return parsed


def _plain(override) -> Any:
    try:
        return override.value()
    except Exception:  # a sweep: no single value
        return None


def _values(override) -> Optional[list]:
    """The values an override gives (every one of a choice sweep); None when unknowable."""
    from hydra.core.override_parser.types import ValueType

    if override.is_delete():
        return None
    if override.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
        return list(override.sweep_string_iterator())
    if override.value_type == ValueType.ELEMENT:
        return [override.value()]
    return None  # range, interval, glob: leave them to Hydra


def _split_key(key: str) -> tuple[str, str]:
    head, rest = key.split(".", 1) if "." in key else (key.split("[", 1)[0], "")
    return head, re.split(r"[.\[]", rest, maxsplit=1)[0]


def _kind(override) -> str:
    return "add" if override.is_add() else "force" if override.is_force_add() else "delete" if override.is_delete() \
        else "change"


def _assignment(override) -> str:
    return override.input_line.split("=", 1)[-1] if "=" in override.input_line else ""


# ------------------------------------------------------------------- the config tree
class _Configs:
    """The config folders as Hydra searches them (the primary first), read lazily."""

    def __init__(self, dirs: list[Path], name: str):
        self.dirs = dirs
        self.name = name
        self._cache: dict[Path, Any] = {}
        found = [d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()]
        self.primary = self.load(found[0]) if found else None
        self.defaults = _defaults_of(self.primary) if self.primary is not None else None

    def load(self, path: Path) -> Any:
        """A YAML file as an OmegaConf node without resolving anything; None if unreadable."""
        if path not in self._cache:
            from omegaconf import OmegaConf

            try:
                self._cache[path] = OmegaConf.load(path)
            except Exception:
                self._cache[path] = None
        return self._cache[path]

    def is_group(self, name: str) -> bool:
        return any((d / name).is_dir() for d in self.dirs)

    def options(self, group: str) -> list[str]:
        return sorted({p.relative_to(d / group).with_suffix("").as_posix()
                       for d in self.dirs if (d / group).is_dir() for p in (d / group).rglob("*.yaml")})

    def option_file(self, group: str, option: str) -> Optional[Path]:
        for d in self.dirs:
            path = d / group / f"{option}.yaml"
            if path.is_file():
                return path
        return None

    def display(self, path: Path) -> str:
        for d in self.dirs:
            try:
                return f"{d.name}/{path.relative_to(d).as_posix()}"
            except ValueError:
                continue
        return str(path)


def _defaults_of(node: Any) -> Optional[dict[str, Optional[str]]]:
    """``group -> option`` of a config's defaults list (None for ``optional group: null``);
    None when the list has a form we do not know."""
    from omegaconf import DictConfig, ListConfig

    if not isinstance(node, DictConfig):
        return None
    items = node.get("defaults", [])
    if not isinstance(items, ListConfig):
        return None
    out: dict[str, Optional[str]] = {}
    for item in items:
        if isinstance(item, str):
            continue  # _self_, or a config of the same folder
        if not isinstance(item, DictConfig) or len(item) != 1:
            return None
        (key, value), = item.items_ex(resolve=False)
        words = str(key).split()
        group = words[-1].lstrip("/").split("@", 1)[0]
        if group == "hydra" or group.startswith("hydra/"):
            continue
        out[group] = None if value is None else str(value)
    return out


def _group_choices(overrides: list, config: _Configs) -> dict[str, Optional[list[str]]]:
    """Per group, the options it may end up with: the command line's (every value of a
    sweep), else the primary config's default as the ``_global_`` configs in use
    (``experiment=...``, in defaults-list order) switch it with ``override /group:``.
    None where unknowable."""
    if config.defaults is None:
        return {}
    chosen: dict[str, Optional[list[str]]] = {g: None if o is None else [o] for g, o in config.defaults.items()}
    given: set[str] = set()
    for o in overrides:
        key = o.key_or_group
        if "." in key or "/" in key or o.package or not config.is_group(key) or o.is_delete():
            continue
        values = _values(o)
        chosen[key] = None if values is None or not all(isinstance(v, str) for v in values) else values
        given.add(key)
    switches: list[list[Optional[dict[str, Optional[str]]]]] = []  # per global group in use: per value
    for group in chosen:
        paths = [config.option_file(group, v) for v in chosen[group] or []]
        if any(p is not None and _is_global(p) for p in paths):
            switches.append([_defaults_of(config.load(p)) if p is not None else {} for p in paths])
    out = dict(chosen)
    for group in chosen:
        if group in given or chosen[group] is None:
            continue
        current: Optional[set[str]] = set(chosen[group])
        for per_value in switches:
            if current is None:
                break
            after: Optional[set[str]] = set()
            for switched in per_value:
                if switched is None or (group in switched and switched[group] is None):
                    after = None  # a defaults list we cannot read, or a group switched off
                    break
                after |= {switched[group]} if group in switched else current
            current = after
        out[group] = sorted(current) if current else None
    return out


def _is_global(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:2000]
    except OSError:
        return False
    return re.search(r"^#\s*@package\s+_global_\s*$", head, re.MULTILINE) is not None


def _global_files(config: _Configs, choices: dict[str, Optional[list[str]]]) -> list[Path]:
    """The ``_global_`` configs in use (experiments, searches): they may set any group's keys."""
    paths = []
    for group, values in choices.items():
        for value in values or []:
            path = config.option_file(group, value)
            if path is not None and _is_global(path):
                paths.append(path)
    return paths


# -------------------------------------------------------------------------- checks
def _check_group_choice(o, config: _Configs) -> None:
    group = o.key_or_group
    if o.is_delete():
        return
    if config.defaults is not None and group not in config.defaults and not (o.is_add() or o.is_force_add()):
        allowed = ", ".join(sorted(config.defaults)) or "none"
        raise ConfigError(group, f"got {_assignment(o)!r}, but {config.name}.yaml chooses no {group}; "
                          f"allowed groups here: {allowed}")
    values = _values(o)
    if values is None:
        return
    options = config.options(group)
    values = [item for value in values for item in (value if isinstance(value, list) else [value])]  # group=[a,b]
    for value in values:
        if value is None:
            continue  # group=null: validate says the group is missing
        if not isinstance(value, str) or config.option_file(group, value) is None:
            where = ", ".join(str(d / group) for d in config.dirs if (d / group).is_dir())
            raise ConfigError(group, f"got {value!r}, allowed: one of {', '.join(options)} (the YAML files in {where})")


def _schema_fields(group: str, option: str, config: _Configs) -> Optional[tuple[list[str], Path, Any]]:
    """The schema's field names for ``group=option``, its file and YAML; None when unknowable."""
    path = config.option_file(group, option)
    node = config.load(path) if path is not None else None
    if node is None or _is_global(path):
        return None
    if "_target_" in node.keys():
        return None  # a user's class: its constructor is the schema
    if group in REGISTRY_GROUPS:
        name = node.get("name") if "name" in node.keys() else None
        if not isinstance(name, str) or name not in REGISTRY_GROUPS[group]:
            return None  # validate names the bad name
        schema = REGISTRY_GROUPS[group].schema(name) or NamedConfig
    elif group in FIXED_GROUPS:
        schema = FIXED_GROUPS[group]
    else:
        return None
    return [f.name for f in fields(schema)], path, node


def _set_by_globals(group: str, field: str, config: _Configs, choices) -> Optional[bool]:
    """Whether a ``_global_`` config in use sets ``group.field``; None when unknowable."""
    from omegaconf import DictConfig

    for path in _global_files(config, choices):
        node = config.load(path)
        if node is None:
            return None
        part = node.get(group) if group in node.keys() else None
        if part is None:
            continue
        if not isinstance(part, DictConfig):
            return None
        if field in part.keys():
            return True
    return False


def _check_group_key(o, group: str, field: str, choices: dict[str, Optional[list[str]]], config: _Configs) -> None:
    options = choices.get(group)
    if not options or not field:
        return
    known = [_schema_fields(group, option, config) for option in options]
    if any(k is None for k in known):
        return
    kind = _kind(o)
    valid_somewhere = [k for k in known if field in k[0]]
    if not valid_somewhere:
        if kind == "add":
            return  # validate refuses it with the same words
        valid = known[0][0]
        raise ConfigError(f"{group}.{field}", f"unknown key; valid keys here: {', '.join(valid)}")
    if len(valid_somewhere) != len(known):
        return  # a sweep over options where only some have it: Hydra says which
    in_yaml = all(field in k[2].keys() for k in known)
    if kind == "add" and in_yaml:
        key = f"{group}.{field}"
        raise ConfigError(key, f"already set (in {config.display(known[0][1])}); allowed: {key}={_assignment(o)} "
                          f"(no +) to change it, or ++{key}=... to add or change")
    if kind == "change" and in_yaml and _is_whole_field(o, group, field):
        _check_container_kind(o, f"{group}.{field}", [k[2].get(field) for k in known], config.display(known[0][1]))
    if kind in ("change", "delete") and not any(field in k[2].keys() for k in known):
        by_globals = _set_by_globals(group, field, config, choices)
        if by_globals is None or by_globals:
            return
        key = f"{group}.{field}"
        if kind == "delete":
            raise ConfigError(key, f"not set in {config.display(known[0][1])}, so there is nothing to delete")
        raise ConfigError(key, f"a valid key that {config.display(known[0][1])} does not set; allowed: "
                          f"++{key}={_assignment(o)} (adds it, or changes it where it is set)")


def _is_whole_field(o, group: str, field: str) -> bool:
    return o.key_or_group == f"{group}.{field}"


def _check_container_kind(o, key: str, current: list, where: str) -> None:
    """A list cannot be replaced by a mapping, nor a mapping by a list (Hydra: "Cannot merge")."""
    from omegaconf import DictConfig, ListConfig

    value = _values(o)
    if value is None or len(value) != 1:
        return
    value = value[0]
    if all(isinstance(c, ListConfig) for c in current) and isinstance(value, dict):
        raise ConfigError(key, f"got {value!r}, allowed: a list, as in {where} (e.g. {key}=[...])")
    if all(isinstance(c, DictConfig) for c in current) and isinstance(value, list):
        raise ConfigError(key, f"got {value!r}, allowed: a mapping of keys, as in {where} (e.g. {key}={{...}})")


def _check_top_level(key: str, kind: str, config: _Configs) -> None:
    """``key=value`` for a key that is no group: it must be in the primary config."""
    if config.primary is None or kind in ("add", "force"):
        return
    if key in config.primary.keys():
        return
    groups = sorted(config.defaults or [])
    keys = sorted(k for k in config.primary.keys() if k not in ("defaults", "hydra"))
    raise ConfigError(key, f"unknown key; valid keys here: {', '.join(keys + groups)} "
                      f"(groups take group=option, their keys group.key=value)")


def _check_node_key(o, head: str, field: str, config: _Configs) -> None:
    """``node.key=value`` for a plain node of the primary config (``eval.knn_k``)."""
    from omegaconf import DictConfig

    if config.primary is None or _kind(o) in ("add", "force"):
        return
    if head not in config.primary.keys():
        _check_top_level(head, "change", config)
        return
    node = config.primary.get(head)
    if not isinstance(node, DictConfig):
        if node is None or isinstance(node, (str, int, float, bool)):
            raise ConfigError(o.key_or_group, f"{head} is a single value, not a node of keys; allowed: {head}=<value>")
        return
    if not field or field in node.keys():
        return
    raise ConfigError(f"{head}.{field}", f"unknown key; valid keys here: {', '.join(str(k) for k in node.keys())}")

