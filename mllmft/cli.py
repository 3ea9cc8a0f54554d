"""What the console entry points share: one clear line for a user's mistake, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mllmft.checks import check_directory
from mllmft.config import CONF_DIR
from mllmft.errors import ConfigError, Preempted, UserInputError

WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def run_entry_point(config_name: str) -> Callable[[], None]:
    """The ``main`` of mllmft-train, mllmft-eval and mllmft-merge: one run composed from
    ``conf/<config_name>.yaml``, whose ``change=`` (fit, evaluate, merge) says what happens between the
    tests. Returns ``optimized_metric``'s value to sweepers."""

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    @user_errors_exit
    def main(cfg: DictConfig) -> float | None:
        from mllmft.results import metric_value
        from mllmft.run import run  # torch and Lightning after Hydra parsed: --help is fast

        results = run(cfg)
        name = cfg.get("optimized_metric")
        return metric_value(results, name) if name else None

    return main


def user_errors_exit(fn):
    """Exit 2 with ``mllmft: error: <one line>`` for a user's mistake: our own errors, and the same
    found by a library (Hydra instantiating a config, OmegaConf, Lightning's argument checks),
    unwrapped to their cause. Anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Preempted as stop:  # not a mistake: one line (from rank 0), and the status of a process the signal ended
            from lightning.pytorch.utilities import rank_zero_only  # loaded by then: the run used it

            if rank_zero_only.rank == 0:
                print(f"mllmft: {stop}", file=sys.stderr)
            sys.exit(stop.exit_status)
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            exit_with(message)
        finally:
            _finish_wandb()

    return wrapper


def exit_with(message: str) -> NoReturn:
    """A user's mistake, as every entry point reports it: one line on stderr, exit status 2."""
    print(f"mllmft: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


class RunDirectoryCheck(Callback):
    """Hydra makes the run's directory (``hydra.run.dir``; a sweep's ``hydra.sweep.dir``) before the
    entry point runs, and would fail there with its traceback: one that cannot be made or written is
    refused first. Hydra turns a callback's exception into a warning, so this one exits itself."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)

    @staticmethod
    def _check(key: str, path: str) -> None:
        try:
            check_directory(key, path)
        except ConfigError as err:
            exit_with(str(err))


def user_error_message(err: BaseException) -> str | None:
    """The one line to print for ``err`` if it (or what caused it) is a user's mistake, else None."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, UserInputError):
            return one_line(str(e))
    for e in chain:
        if isinstance(e, (MisconfigurationException, OmegaConfBaseException)):
            return one_line(str(e))
    instantiation = next((e for e in chain if isinstance(e, InstantiationException)), None)
    cause = instantiation.__cause__ if instantiation is not None else None
    if isinstance(cause, (TypeError, ValueError)):  # a _target_ called with arguments it refuses
        key = next(
            (line.split(":", 1)[1].strip() for line in str(instantiation).splitlines() if line.startswith("full_key:")),
            "config",
        )
        return one_line(f"{key}: {cause}")
    return None


def one_line(message: str) -> str:
    """Messages re-raised from a DataLoader worker carry the worker's traceback: keep its last line,
    the original message."""
    if WORKER_TRACEBACK in message:
        last = message.strip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(message.split())


def _finish_wandb() -> None:
    """One W&B run per (multirun) job, never one for the whole sweep."""
    if "wandb" in sys.modules:
        import wandb

        wandb.finish()
