"""The `dfprep` command group: one-line errors, clean interrupts, and the entry point (commands: build, look)."""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from dfprep.cli.deps import dependency_problem, missing_module_line
from dfprep.errors import DfprepError


INTERRUPTED = "interrupted: rerun the same command to continue"


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup on the way out runs; carries the exit code."""

    exit_code = 143


_RECEIVED: list[int] = []  # the signal that interrupted the command (libraries may re-raise a plain Ctrl-C)


_COMMAND_PROCESS = False  # set by main(): the process is the `dfprep` command, not a library user's

def _on_signal(signum: int, frame: Any) -> None:
    """First SIGINT/SIGTERM: unwind cleanly (markers released, staging removed); a second one: stop at once."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, _stop_now)
    _RECEIVED.append(signum)
    raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()


def _stop_now(signum: int, frame: Any) -> None:
    """Interrupted again while cleaning up: leave now (the next run treats what is left as an interrupted run)."""
    click.echo(f"dfprep: {INTERRUPTED}", err=True)
    os._exit(143 if signum == signal.SIGTERM else 130)


def _install_signal_handlers() -> dict[int, Any]:
    """Ctrl-C and SIGTERM unwind through every cleanup; returns the handlers to put back (library callers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in saved:
        signal.signal(number, _on_signal)
    return saved


def _fail_cleanly(function: Callable[..., Any]) -> Callable[..., Any]:
    """A DfprepError is one line and exit code 2; Ctrl-C / SIGTERM one line and 130 / 143 (no traceback)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = _install_signal_handlers()
        _RECEIVED.clear()
        try:
            return function(*args, **kwargs)
        except DfprepError as exc:
            click.echo(f"dfprep: error: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            click.echo(f"dfprep: error: {missing_module_line(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            click.echo(f"dfprep: {INTERRUPTED}", err=True)
            terminated = isinstance(exc, Interrupted) or signal.SIGTERM in _RECEIVED
            sys.exit(Interrupted.exit_code if terminated else 130)
        finally:
            for number, handler in saved.items():
                signal.signal(number, handler)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dfprep")
def cli() -> None:
    """Deepfake-detection video datasets → WebDataset shards of aligned faces."""
    problem = dependency_problem()
    if problem:  # checked before any command runs: a too-old library fails here, not deep inside a run
        click.echo(f"dfprep: error: {problem}", err=True)
        sys.exit(2)


def _add_torch_commands() -> None:
    """`train` and `evaluate` live under dfprep.torch; their module imports without torch installed."""
    from dfprep.torch.commands import evaluate_command, train_command

    cli.add_command(train_command, "train")
    cli.add_command(evaluate_command, "evaluate")


_add_torch_commands()


def main() -> None:
    """Console-script entry point (the commands register when dfprep.cli is imported)."""
    global _COMMAND_PROCESS
    _COMMAND_PROCESS = True  # this process is the `dfprep` command (see without_pandas)
    try:
        cli(prog_name="dfprep")
    except ModuleNotFoundError as exc:  # a command outside _fail_cleanly (train/evaluate) met a missing module
        click.echo(f"dfprep: error: {missing_module_line(exc)}", err=True)
        sys.exit(2)


@contextmanager
def without_pandas() -> Iterator[None]:
    """pyarrow imports pandas (~0.4 s) at its first array conversion whenever pandas is installed; `extract`
    never uses pandas (it is not a dependency), so while it runs in its own `dfprep` process pandas is as if
    absent. Not for commands that load torch (torch asks whether pandas exists), nor in anybody else's process
    (the click command called from Python, a test runner): there it does nothing."""
    finder = _PandasAbsent() if _COMMAND_PROCESS and "pandas" not in sys.modules else None
    if finder is not None:
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)


def system_allocator() -> None:
    """In the `dfprep` command's own process, Arrow allocates with the system allocator: the driver's Arrow work is
    bookkeeping (catalog, plan, indexes), and Arrow's default, mimalloc, keeps much of what it frees (a
    20,000-video run's driver peaked 16.5 MB above a 2,000-video run's with it, 11.1 MB with the system's, and
    mimalloc's first use alone costs ~10 MB: `benchmarks/cli_speed.py memory`). Arrow reads
    ARROW_DEFAULT_MEMORY_POOL once, when pyarrow loads, so this runs before anything imports pyarrow; the
    variable is removed again so Ray's workers (children) keep Arrow's default. Anybody else's process, or a
    user who set the variable, is left alone."""
    if not _COMMAND_PROCESS or "pyarrow" in sys.modules or "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    try:
        import pyarrow  # noqa: F401 - loads Arrow, which reads the variable now
    finally:
        del os.environ["ARROW_DEFAULT_MEMORY_POOL"]


class _PandasAbsent(importlib.abc.MetaPathFinder):
    """Finds no pandas: `import pandas` raises ModuleNotFoundError, which pyarrow takes as "not installed"."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        """Refuse pandas and its submodules; leave every other module to the real finders."""
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (the dfprep command runs without pandas)",
                                      name=name)
        return None
