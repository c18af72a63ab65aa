"""Run ``train.py`` / ``evaluate.py`` as a user would, fast enough for a battery of cases.

:func:`run_cli` is the public function: ``run_cli("train.py", ["trainer.epochs=0"], cwd)``
returns ``(exit code, stdout and stderr together)``, as ``python train.py trainer.epochs=0``
run from ``cwd`` would. A fresh interpreter costs about 2-3 s (torch and Hydra imports), so
where ``os.fork`` exists the heavy modules are imported once into this process and each
call runs the script in a forked child: it changes into ``cwd``, points file descriptors 1
and 2 at one file, clears Hydra's global state and executes the script as ``__main__``
(so whatever the script does under ``if __name__ == "__main__":`` happens, exactly as on
the command line), then leaves with the script's exit status through ``os._exit``.
Elsewhere it falls back to a subprocess. :func:`run_many` runs a list of such calls, as many
at a time as there are CPUs; :func:`start_cli` / :func:`finish_cli` are the two halves of one.

The child runs torch on one thread: OpenMP's thread pool does not survive ``fork`` when
the parent has used it, and a case of bad input needs no speed.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent

# Environment variables that would change what a user sees (a full Hydra stack trace, a
# data root from the tester's shell); removed for every case.
SCRUBBED_ENV = ("HYDRA_FULL_ERROR", "AEEXP_DATA", "AEEXP_ROOT", "AEEXP_OUTPUT", "AEEXP_CACHE")


def case_env(cwd: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """What a case adds to the environment: ``AEEXP_ROOT=<cwd>``, so its ``paths`` (conf/paths:
    ``data/``, ``outputs/``) are in its own folder rather than the project's, then ``extra``."""
    return {"AEEXP_ROOT": str(cwd), **extra}

_warm = False


def _script_path(script: str | Path) -> Path:
    path = Path(script)
    return path if path.is_absolute() else REPO / path


def warm_up() -> None:
    """Import what every case needs (torch, Hydra and its plugins, aeexp) once, here."""
    global _warm
    if _warm:
        return
    import hydra
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins

    import aeexp  # noqa: F401
    import aeexp.evaluation  # noqa: F401
    import aeexp.training.run  # noqa: F401

    Plugins.instance()  # Hydra's plugin scan, otherwise repeated in every child
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            hydra.compose("config", overrides=["dataset=synthetic"])
    finally:
        GlobalHydra.instance().clear()
    _warm = True


def run_cli(script: str | Path, args: Sequence[str], cwd: Path | str, timeout: float = 60,
            before: Optional[Callable[[], None]] = None, env: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
    """``python <script> <args>`` run from ``cwd``: (exit status, stdout + stderr).

    ``script`` is a path, relative paths from the repository root. ``env``: variables set
    for the run (``PYTHONPATH`` included, as the interpreter would read it at start).
    ``before``, if given, is called in the child just before the script runs (fork only; it
    may raise SystemExit). A case that outlives ``timeout`` seconds is killed and returns 124.
    """
    if hasattr(os, "fork"):
        return finish_cli(start_cli(script, args, cwd, timeout, before, env))
    if before is not None:
        raise RuntimeError("run_cli(before=...) needs os.fork")
    return _run_subprocess(_script_path(script), list(args), Path(cwd), timeout, dict(env or {}))


def _run_subprocess(path: Path, args: list[str], cwd: Path, timeout: float, extra: dict[str, str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV} | case_env(cwd, extra)
    try:
        result = subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
        return 124, out + f"\n[run_cli: killed after {timeout} s]"
    return result.returncode, result.stdout + result.stderr


@dataclass
class _Running:
    pid: int
    out_name: str
    timeout: float
    deadline: float


def start_cli(script: str | Path, args: Sequence[str], cwd: Path | str, timeout: float = 60,
              before: Optional[Callable[[], None]] = None, env: Optional[Mapping[str, str]] = None) -> _Running:
    """Start what :func:`run_cli` runs, in a forked child, and return at once; see :func:`finish_cli`."""
    warm_up()
    fd, out_name = tempfile.mkstemp(prefix="run_cli.", suffix=".out")
    os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(_script_path(script), list(args), Path(cwd), out_name, before, dict(env or {}))
    return _Running(pid, out_name, timeout, time.monotonic() + timeout)


def _poll(running: _Running, block: bool) -> Optional[tuple[int, str]]:
    """The child's (status, output) once it has ended (killed at its deadline); None if still running."""
    done, status = os.waitpid(running.pid, 0 if block else os.WNOHANG)
    if not done:
        if time.monotonic() <= running.deadline:
            return None
        try:
            os.killpg(running.pid, signal.SIGKILL)  # the child leads its own group (DataLoader workers too)
        except ProcessLookupError:
            pass
        os.waitpid(running.pid, 0)
        code = 124
    else:
        code = os.waitstatus_to_exitcode(status) if status else 0
    try:
        with open(running.out_name, encoding="utf-8", errors="replace") as handle:
            output = handle.read()
    finally:
        os.unlink(running.out_name)
    if code == 124:
        output += f"\n[run_cli: killed after {running.timeout} s]"
    return code, output


def finish_cli(running: _Running) -> tuple[int, str]:
    """Wait for a child of :func:`start_cli`: its (exit status, stdout + stderr)."""
    delay = 0.002
    while True:
        result = _poll(running, block=False)
        if result is not None:
            return result
        time.sleep(delay)
        delay = min(delay * 1.5, 0.005)


def run_many(calls: Sequence[Mapping], jobs: Optional[int] = None) -> list[tuple[int, str]]:
    """:func:`run_cli` for each call (a dict of its keyword arguments), up to ``jobs`` at a
    time (default: the CPU count); results in the order of ``calls``."""
    if not hasattr(os, "fork"):
        return [run_cli(**call) for call in calls]
    jobs = max(1, jobs or os.cpu_count() or 1)
    results: list[Optional[tuple[int, str]]] = [None] * len(calls)
    waiting = list(enumerate(calls))
    running: dict[int, _Running] = {}
    delay = 0.002
    while waiting or running:
        while waiting and len(running) < jobs:
            i, call = waiting.pop(0)
            running[i] = start_cli(**call)
            delay = 0.002
        for i, child in list(running.items()):
            result = _poll(child, block=False)
            if result is not None:
                results[i] = result
                del running[i]
                delay = 0.002
        time.sleep(delay)
        delay = min(delay * 1.5, 0.005)
    return results  # type: ignore[return-value]


def _child(path: Path, args: list[str], cwd: Path, out_name: str,
           before: Optional[Callable[[], None]], env: dict[str, str]) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        out = os.open(out_name, os.O_WRONLY | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        # pytest replaces sys.stdout/stderr with its capture objects; the script must write
        # to the real descriptors, as a user's terminal sees them.
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        for name in SCRUBBED_ENV:
            os.environ.pop(name, None)
        os.environ.update(case_env(cwd, env))
        os.chdir(cwd)
        import torch
        from hydra.core.global_hydra import GlobalHydra

        torch.set_num_threads(1)
        GlobalHydra.instance().clear()
        import logging

        logging.root.handlers.clear()  # a fresh interpreter has none (pytest's capture would take the lines)
        logging.root.setLevel(logging.WARNING)
        sys.argv = [str(path), *args]
        sys.path[0:0] = [str(path.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        code = 0
        if before is not None:
            before()
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:  # what Python itself would print for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)  # sys.exit("message"): Python prints it and exits with 1
    return 1
