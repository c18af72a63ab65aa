"""docs/guide.md's files and commands of sections 2 to 4, run as printed.

Each code block of those sections whose header names a file (its first line, or the line
after a leading ``# @package`` directive, is ``# <relative path>``) is written as printed:
``my_models.py`` into a module folder, each YAML file into a config folder, where section
2's ``conf/model/wide.yaml`` becomes ``model/wide.yaml`` (section 4 keeps ``conf/``'s layout
outside the repository, and a test must not add options to the project's ``conf/``).

Every ``python train.py ...`` command of those sections (bash blocks and inline code; none
with a ``<placeholder>``) then runs as a user would (:mod:`cli_runner`), each from its own
empty folder, with the guide's ``/path/to/my/configs`` and ``/path/to/my/code`` pointing at
those folders, ``PYTHONPATH`` only where the command sets it, ``--config-dir`` added to
section 2's commands (written for files in ``conf/``), ``dataset=fashion_mnist`` replaced by
``dataset=synthetic``, and ``debug=fast`` with conftest's small-run settings appended, so
that each run takes a second or two. ``python -m aeexp list`` commands run through
``aeexp.__main__.main``. A printed file that is invalid as printed (a ``# @package`` line
below another comment, a misspelt key) fails its command here.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cli_runner import run_cli, run_many
from conftest import REPO, SMALL_RUN, compose

from aeexp.config import validate

GUIDE = REPO / "docs" / "guide.md"
SECTIONS = (2, 3, 4)
CONFIGS_PLACEHOLDER = "/path/to/my/configs"
CODE_PLACEHOLDER = "/path/to/my/code"
# What makes a run tiny: the debug config of one short epoch on 4 batches, and the
# non-dataset settings of conftest's SMALL_RUN (the dataset stays the one the command names).
TINY = ("debug=fast", *(a for a in SMALL_RUN if not a.startswith("dataset")), "trainer.num_threads=1")


# ------------------------------------------------------------------- reading the guide
def guide_sections(text: str) -> dict[int, str]:
    """``## <n>. ...`` sections of the guide, by number."""
    parts = re.split(r"^## (\d+)\. ", text, flags=re.M)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2])}


def code_blocks(section: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", section, flags=re.M | re.S)]


def file_path(block: str) -> str | None:
    """The relative path a block's header names: its first line ``# <path>`` (a ``: note``
    may follow), or the line after a first line ``# @package ...``."""
    lines = block.splitlines()
    header = lines[1:2] if lines[:1] and re.match(r"#\s*@package\b", lines[0]) else lines[:1]
    match = re.fullmatch(r"# ([\w./-]+\.(?:ya?ml|py))(?::.*)?", header[0]) if header else None
    return match.group(1) if match else None


def printed_files(text: str) -> dict[str, str]:
    """{relative path as printed: the block's text} for sections 2 to 4."""
    sections = guide_sections(text)
    files = {}
    for number in SECTIONS:
        for _, block in code_blocks(sections[number]):
            path = file_path(block)
            if path is not None:
                assert path not in files, f"guide prints {path} twice"
                files[path] = block
    return files


def printed_commands(text: str) -> list[str]:
    """Every ``python ...`` command line of sections 2 to 4: bash blocks' lines, and inline
    code spans starting with ``python`` (whitespace made single spaces)."""
    sections = guide_sections(text)
    commands = []
    for number in SECTIONS:
        section = sections[number]
        for language, block in code_blocks(section):
            if language == "bash":
                joined = block.replace("\\\n", " ")
                commands += [line.strip() for line in joined.splitlines()
                             if line.strip() and not line.strip().startswith("#")]
        prose = re.sub(r"^```\w*\n.*?^```$", "", section, flags=re.M | re.S)
        commands += [" ".join(span.split()) for span in re.findall(r"`(python [^`]+)`", prose)]
    return commands


def config_dir_path(path: str) -> str:
    """Where a printed config file goes in the config folder: ``conf/x/y.yaml`` -> ``x/y.yaml``."""
    return path.removeprefix("conf/")


TEXT = GUIDE.read_text(encoding="utf-8")
FILES = printed_files(TEXT)
COMMANDS = [c for c in printed_commands(TEXT) if "<" not in c]
TRAIN_COMMANDS = [c for c in COMMANDS if "train.py" in shlex.split(c)[:3]]
LIST_COMMANDS = [c for c in COMMANDS if shlex.split(c)[1:4] == ["-m", "aeexp", "list"]]


# ------------------------------------------------------------------------- the site
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``configs/`` and ``code/`` holding the printed files, as printed."""
    root = tmp_path_factory.mktemp("guide")
    for path, block in FILES.items():
        where = root / "code" / path if path.endswith(".py") else root / "configs" / config_dir_path(path)
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(block, encoding="utf-8")
    return root


def cli_call(command: str, site: Path, cwd: Path, extra: tuple[str, ...] = ()) -> dict:
    """run_cli's arguments for a printed ``train.py`` command, made tiny."""
    words = [w.replace(CONFIGS_PLACEHOLDER, str(site / "configs")).replace(CODE_PLACEHOLDER, str(site / "code"))
             for w in shlex.split(command)]
    env = {}
    while "=" in words[0]:  # VAR=value before the command
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[:2] == ["python", "train.py"], command
    args = ["dataset=synthetic" if w == "dataset=fashion_mnist" else w for w in words[2:]]
    if "--config-dir" not in args:
        args = ["--config-dir", str(site / "configs"), *args]
    cwd.mkdir(parents=True)
    return dict(script="train.py", args=[*args, *TINY, *extra], cwd=cwd, env=env, timeout=120)


@pytest.fixture(scope="module")
def train_results(request, site) -> dict[str, tuple[int, str, Path]]:
    """Every printed train.py command this session tests, run (two at a time): {command: (status, output, cwd)}."""
    selected = {item.callspec.params["command"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_a_printed_train_command_runs"}
    commands = [c for c in TRAIN_COMMANDS if c in selected]
    calls = [cli_call(c, site, site / "runs" / str(i)) for i, c in enumerate(commands)]
    results = run_many(calls, jobs=2)
    return {c: (*result, call["cwd"]) for c, result, call in zip(commands, results, calls)}


def plain_yaml(block: str) -> dict:
    return yaml.safe_load(block) or {}


def is_within(part, whole) -> bool:
    """Every key of ``part`` is in ``whole`` with the same value (recursively)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and is_within(v, whole[k]) for k, v in part.items())
    return part == whole


def chosen_options(args: list[str]) -> list[tuple[str, str]]:
    """(group, option) of each printed option the command line selects, also through an
    experiment's ``override /group: option`` defaults."""
    chosen = []
    for arg in args:
        group, _, option = arg.partition("=")
        path = f"{group}/{option}.yaml"
        printed = {config_dir_path(p): block for p, block in FILES.items()}
        if "." in group or path not in printed:
            continue
        chosen.append((group, option))
        for entry in plain_yaml(printed[path]).get("defaults", []) if group == "experiment" else []:
            for key, value in (entry.items() if isinstance(entry, dict) else []):
                name = key.removeprefix("override ").lstrip("/")
                if f"{name}/{value}.yaml" in printed:
                    chosen.append((name, value))
    return chosen


# ----------------------------------------------------------------------------- tests
def test_the_guide_prints_the_files_and_commands_it_describes():
    layout = next(block for language, block in code_blocks(guide_sections(TEXT)[4]) if not language)
    listed = {line.strip() for line in layout.splitlines()[1:] if line.strip()}
    printed = {config_dir_path(p) for p in FILES}
    assert listed <= printed, f"section 4's folder lists files the guide never prints: {listed - printed}"
    assert "my_models.py" in FILES
    assert {"model/wide.yaml", "model/linear16.yaml", "experiment/my_linear.yaml"} <= printed
    assert len(TRAIN_COMMANDS) >= 5 and LIST_COMMANDS, COMMANDS
    assert any("PYTHONPATH=" in c for c in TRAIN_COMMANDS)
    assert "tests/test_guide.py" in " ".join(TEXT.split())


@pytest.mark.parametrize("path", sorted(FILES))
def test_a_printed_file_parses(path):
    block = FILES[path]
    if path.endswith(".py"):
        compile(block, path, "exec")
    else:
        assert isinstance(plain_yaml(block), dict), path
        header = [line for line in block.splitlines() if "@package" in line]
        if header:  # Hydra reads the directive only on the file's first lines, above any other comment
            assert block.splitlines()[0] == header[0], f"{path}: '# @package' must be its first line"


def chosen(command: str) -> set[tuple[str, str]]:
    return set(chosen_options(shlex.split(command)))


# The inner loop (pytest -m "not slow") runs each printed command but those choosing only
# printed options a longer command also chooses (``model=linear16`` alone, say, beside
# ``model=linear16 sparsity=top_quarter``), and those training section 2's wide model (3.8
# million parameters: a second or more; the test adds --config-dir to them, as to the others,
# and its file composes and validates in the inner loop).
HEAVY_OPTIONS = {("model", "wide")}
INNER_COMMANDS = [c for c in TRAIN_COMMANDS if not chosen(c) & HEAVY_OPTIONS
                  and not any(chosen(c) < chosen(other) for other in TRAIN_COMMANDS)]


def run_by_a_command(path: str) -> bool:
    """Whether a printed train.py command of the inner loop selects this printed config file
    (and so composes, checks and trains with it: test_a_printed_train_command_runs)."""
    group_option = tuple(config_dir_path(path).removesuffix(".yaml").split("/"))
    return any(group_option in chosen(command) for command in INNER_COMMANDS)


# The inner loop composes the files its printed commands do not use; those commands compose
# and check the others.
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow if run_by_a_command(p) else ())
                                  for p in sorted(p for p in FILES if not p.endswith(".py"))])
def test_a_printed_config_composes_and_validates(path, site, monkeypatch):
    """Each config file, chosen on its own over the defaults (synthetic data), composes as
    train.py would compose it and passes aeexp's checks; this covers the files no command
    uses (a dataset of images in a folder only the reader has is checked, not read)."""
    group, option = config_dir_path(path).removesuffix(".yaml").split("/")
    monkeypatch.syspath_prepend(str(site / "code"))
    try:
        overrides = [f"hydra.searchpath=[file://{site / 'configs'}]", f"{group}={option}"]
        if group != "dataset":
            overrides.insert(1, "dataset=synthetic")
        cfg = compose(*overrides)
        if group != "experiment":
            assert is_within(plain_yaml(FILES[path]), OmegaConf.to_container(cfg[group]))
        else:
            assert "experiment" not in cfg, f"{path}: its package directive was not read"
        validate(cfg)
    finally:
        sys.modules.pop("my_models", None)  # forked runs must find it through PYTHONPATH only


def short(command: str) -> str:
    """A test id: the command with the guide's placeholder folders shortened."""
    return command.replace(CONFIGS_PLACEHOLDER, "CONFIGS").replace(CODE_PLACEHOLDER, "CODE")


@pytest.mark.parametrize("command", [pytest.param(c, marks=() if c in INNER_COMMANDS else pytest.mark.slow)
                                     for c in TRAIN_COMMANDS], ids=short)
def test_a_printed_train_command_runs(command, train_results):
    status, output, cwd = train_results[command]
    assert status == 0, f"{command}\n{output}"
    assert "Traceback" not in output, output
    (metrics_file,) = cwd.glob("outputs/**/metrics.json")
    assert json.loads(metrics_file.read_text())["status"] == "completed"
    ran = yaml.safe_load((metrics_file.parent / ".hydra" / "config.yaml").read_text())
    args = shlex.split(command)
    chosen = chosen_options(args)
    assert chosen, f"{command}: selects none of the printed options"
    for group, option in chosen:
        printed = plain_yaml(FILES.get(f"conf/{group}/{option}.yaml") or FILES[f"{group}/{option}.yaml"])
        if group != "experiment":
            assert is_within({k: v for k, v in printed.items() if k != "defaults"}, ran[group]), (group, option)


@pytest.mark.parametrize("command", LIST_COMMANDS, ids=short)
def test_a_printed_list_command_lists_the_printed_options(command, site, capsys):
    from aeexp.__main__ import main

    args = [w.replace(CONFIGS_PLACEHOLDER, str(site / "configs")) for w in shlex.split(command)[3:]]
    main(args)
    out = capsys.readouterr().out
    if "--config-dir" in args:
        yours = " ".join(line for line in out.splitlines() if "yours:" in line)
        for path in FILES:
            if not path.endswith(".py"):
                assert Path(path).stem in yours, path
        assert "unused" not in yours, "a printed option shadows a built-in one"


def test_the_sparsity_example_refuses_a_bad_fraction_in_bind_as_the_guide_says(site):
    """Section 3: with ``sparsity.fraction=0``, TopFraction.bind's ConfigError is the one line."""
    words = "`sparsity.fraction: got 0, allowed: a fraction in (0, 1]`"
    assert words in " ".join(TEXT.split())
    command = next(c for c in TRAIN_COMMANDS if "sparsity=top_quarter" in c)
    call = cli_call(command, site, site / "runs" / "bad_fraction", extra=("sparsity.fraction=0",))
    status, output = run_cli(**call)
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and words.strip("`") in lines[0], output
