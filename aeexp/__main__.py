"""``python -m aeexp list [--config-dir DIR]``: every registered name per kind, and the config
options: the built-in ones and, with ``--config-dir``, the user's own beside them."""

from __future__ import annotations

import argparse
from pathlib import Path

import aeexp
from aeexp.registry import ALL_REGISTRIES

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def config_options(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """YAML options per config group (``model: fc, mlp``), as Hydra would see them."""
    conf_dir = Path(conf_dir)
    if not conf_dir.is_dir():
        return {}
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(conf_dir.iterdir())
        if group.is_dir() and any(group.glob("*.yaml"))
    }


def list_components(user_dir: Path | None = None) -> str:
    """The listing ``python -m aeexp list`` prints. ``user_dir``: a ``--config-dir`` whose
    options are listed beside the built-in ones, marked ``yours``. Hydra searches that folder
    after the built-in one, so an option of yours with a built-in's name is never used
    (it is marked so: rename it)."""
    lines = ["Registered components (the `name:` a config node may use):"]
    for registry in ALL_REGISTRIES:
        lines.append(f"  {registry.kind:<11} {', '.join(registry.names())}")
    built_in = config_options()
    yours = config_options(user_dir) if user_dir is not None else {}
    if not built_in and not yours:
        return "\n".join(lines)
    where = f"built-in from {CONF_DIR}"
    if user_dir is not None:
        where += f"; yours from {user_dir} (--config-dir, searched after the built-in folder)"
    lines.append(f"Config options (group=option on the command line; {where}):")
    for group in sorted(set(built_in) | set(yours), key=lambda g: (g not in built_in, g)):
        names = built_in.get(group, [])
        if names:
            lines.append(f"  {group:<11} {', '.join(names)}")
        if group in yours:
            marked = [f"{n} (unused: the built-in {n} comes first; rename yours)" if n in names else n
                      for n in yours[group]]
            lines.append(f"  {'' if names else group:<11} yours: {', '.join(marked)}")
    if user_dir is not None:
        built_in_primaries = {p.stem for p in CONF_DIR.glob("*.yaml")}
        primaries = [f"{n} (unused: the built-in {n} comes first; rename yours)" if n in built_in_primaries else n
                     for n in sorted(p.stem for p in Path(user_dir).glob("*.yaml"))]
        if primaries:
            lines.append(f"  {'':<11} yours, primary configs (--config-name): {', '.join(primaries)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aeexp", description=aeexp.__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    listing = commands.add_parser("list", help="print every registered name per kind and the config options",
                                  description="Every registered name per kind, and the config options per group.")
    listing.add_argument("--config-dir", "-cd", type=Path, default=None, metavar="DIR",
                         help="a folder of your own config groups (as train.py --config-dir DIR takes it): "
                              "its options are listed beside the built-in ones, marked 'yours'")
    exporting = commands.add_parser("export", help="write a run's codes (and labels) of a split to .npy / .pt",
                                    description=__import__("aeexp.export").export.__doc__.split("\n\n")[1])
    exporting.add_argument("args", nargs="*", metavar="key=value",
                           help="run_dir=<dir> (required), split=test|val|train, which=best|last, format=npy|pt, "
                                "out=<folder>, device=cpu|cuda|auto, batch_size=2048")
    args = parser.parse_args(argv)
    if args.command == "export":
        import logging

        from aeexp.cli import USER_ERRORS
        from aeexp.export import export_codes
        from aeexp.runs import RunDirError

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        try:
            files = export_codes(args.args)
        except USER_ERRORS + (RunDirError, OSError) as err:
            logging.getLogger("aeexp.export").error("%s", err)  # one line, no traceback
            raise SystemExit(2) from None
        print(f"codes: {files['codes']}\nlabels: {files['labels']}")
        return
    if args.command == "list":
        if args.config_dir is not None and not args.config_dir.is_dir():
            listing.error(f"--config-dir: got '{args.config_dir}': no such folder")
        print(list_components(args.config_dir.absolute() if args.config_dir is not None else None))


if __name__ == "__main__":
    main()
