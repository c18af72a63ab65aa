"""``python -m aeexp list``: every registered name per kind, and the config options."""

from __future__ import annotations

import argparse
from pathlib import Path

import aeexp
from aeexp.registry import ALL_REGISTRIES

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def config_options(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """YAML options per config group (``model: fc, mlp``), as Hydra would see them."""
    if not conf_dir.is_dir():
        return {}
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(conf_dir.iterdir())
        if group.is_dir() and any(group.glob("*.yaml"))
    }


def list_components() -> str:
    lines = ["Registered components (the `name:` a config node may use):"]
    for registry in ALL_REGISTRIES:
        lines.append(f"  {registry.kind:<11} {', '.join(registry.names())}")
    options = config_options()
    if options:
        lines.append(f"Config options (group=option on the command line, from {CONF_DIR}):")
        for group, names in options.items():
            lines.append(f"  {group:<11} {', '.join(names)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aeexp", description=aeexp.__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list"], help="list: print every registered name per kind")
    parser.parse_args(argv)
    print(list_components())


if __name__ == "__main__":
    main()
