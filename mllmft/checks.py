"""Checks of config values (numbers in range, seeds, regexes, directories, the trainer's loop): one clear
line naming the key and what it may be, before anything runs."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from mllmft.errors import ConfigError


def check_number(
    key: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """``value`` is a finite number (an integer if ``integer``) within [low, high]; ``low_open`` /
    ``high_open`` exclude the bound itself."""
    kind = int if integer else (int, float)
    # an int is finite however large (math.isfinite would overflow converting 10**400 to a float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise ConfigError(
            f"{key}={value!r}; expected {'an integer' if integer else 'a finite number'}"
            f"{_interval(low, high, low_open, high_open)}"
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ConfigError(
            f"{key}={value!r}; expected {'an integer' if integer else 'a value'}"
            f"{_interval(low, high, low_open, high_open)}"
        )


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_bool(key: str, value) -> None:
    """A switch is true or false: a string such as 'no' would switch it on."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}; expected true or false")


def compiled_regex(key: str, pattern) -> re.Pattern:
    """``pattern`` compiled, or a one-line error naming the key and what is wrong with it."""
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ConfigError(f"{key}={pattern!r} is not a regular expression ({err})") from err


MAX_SEED = 2**32 - 1  # numpy's largest seed: Lightning's seed_everything seeds numpy too


def check_seed(key: str, value) -> None:
    check_number(key, value, 0, MAX_SEED, integer=True)


def check_share_or_count(key: str, value, *, zero: bool = True) -> None:
    """Lightning's knobs that take a float share of the epoch or an int number of batches
    (``limit_*_batches``, ``val_check_interval``); ``zero``: 0 is allowed (none at all)."""
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fits = False
    elif isinstance(value, int):
        fits = value >= low
    else:
        fits = math.isfinite(value) and (0 <= value if zero else 0 < value) and value <= 1
    if not fits:
        raise ConfigError(
            f"{key}={value!r}; expected a share of the epoch in {'[' if zero else '('}0, 1] "
            f"or a number of batches >= {low}"
        )


# the lowest value of each count of the Lightning Trainer (-1: no limit / all); Lightning checks some
# only when the Trainer is built, after the model, and some never (a 0 it divides by)
TRAINER_COUNTS = {
    "max_steps": -1,
    "max_epochs": -1,
    "num_sanity_val_steps": -1,
    "accumulate_grad_batches": 1,
    "log_every_n_steps": 1,
    "check_val_every_n_epoch": 1,
}
TRAINER_FLAGS = ("enable_progress_bar", "enable_model_summary", "enable_checkpointing", "use_distributed_sampler")
TRAINER_SHARES = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")
CLIP_ALGORITHMS = ("norm", "value")


def check_trainer(trainer: Mapping) -> None:
    """The loop knobs of ``trainer.*`` (null: Lightning's default)."""
    knobs = {k: v for k, v in trainer.items() if v is not None}
    for key, low in TRAINER_COUNTS.items():
        if key in knobs:
            check_number(f"trainer.{key}", knobs[key], low, integer=True)
    for key in TRAINER_SHARES:
        if key in knobs:
            check_share_or_count(f"trainer.{key}", knobs[key])
    if "val_check_interval" in knobs:
        check_share_or_count("trainer.val_check_interval", knobs["val_check_interval"], zero=False)
    for key in TRAINER_FLAGS:
        if key in knobs:
            check_bool(f"trainer.{key}", knobs[key])
    if knobs.get("deterministic", False) != "warn":
        check_bool("trainer.deterministic", knobs.get("deterministic", False))
    if "gradient_clip_val" in knobs:
        check_number("trainer.gradient_clip_val", knobs["gradient_clip_val"], 0)
    if knobs.get("gradient_clip_algorithm", "norm") not in CLIP_ALGORITHMS:
        raise ConfigError(
            f"trainer.gradient_clip_algorithm={knobs['gradient_clip_algorithm']!r}; expected one of {CLIP_ALGORITHMS}"
        )


def check_training_length(trainer: Mapping) -> None:
    """A training run trains at least one step and stops: with none, the final test would score the
    base model and results.json report it as a complete fine-tuned run."""
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        if trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}=0 trains nothing, and the base model would be reported as fine-tuned: set "
                "it to at least 1, or evaluate without training (strategy=zeroshot, or mllmft-eval)"
            )
    if trainer.get("max_steps", -1) == -1 and trainer.get("max_epochs", -1) == -1:
        raise ConfigError("trainer.max_steps=-1 with trainer.max_epochs=-1 never stops training: set either")


def check_directory(key: str, path, *, writable: bool = True) -> None:
    """``path`` is a directory or can be made one (its nearest existing parent is a directory), and the
    run may write in it (``writable``): one line naming the key, not an OSError once the run writes."""
    path = Path(str(path))
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as err:  # a parent that may not be looked into
        raise ConfigError(f"{key}={str(path)!r} cannot be checked ({err.strerror})") from err
    if not existing.is_dir():
        where = "is not a directory" if existing == path else f"cannot be created: {existing} is not a directory"
        raise ConfigError(f"{key}={str(path)!r} {where}")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"{key}={str(path)!r} {where}")


RUN_FLAGS = ("zeroshot_test", "print_config")


def check_run_settings(cfg: Mapping) -> None:
    """What a run's config sets beside the model, the strategy and the data, before anything uses it:
    the seed, the run's switches, the trainer's loop, the run directory."""
    check_seed("seed", cfg["seed"])
    for key in RUN_FLAGS:
        if key in cfg:
            check_bool(key, cfg[key])
    check_trainer(cfg["trainer"])
    check_directory("paths.output_dir", cfg["paths"]["output_dir"])
