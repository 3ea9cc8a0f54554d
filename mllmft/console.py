"""What a run prints: the resolved config and the trainable parameters at start, the score table at
the end; and not the libraries' notices that say nothing about the run."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import rich
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from rich.tree import Tree

CONFIG_ORDER = (
    "model",
    "scope",
    "strategy",
    "objective",
    "data",
    "hardware",
    "trainer",
    "module",
    "callbacks",
    "logger",
    "paths",
)


def config_tree(cfg: DictConfig) -> Tree:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add("[bold]" + str(key) + "[/bold]").add(text.rstrip() or "null")
    return tree


def print_config(cfg: DictConfig, run_dir: str | Path | None = None) -> None:
    """Under Hydra: the group choices and the command line's overrides, a few lines, and the whole
    resolved tree saved as ``<run dir>/config_tree.txt`` (beside Hydra's .hydra/config.yaml).
    Elsewhere (the notebook API): the whole tree."""
    from mllmft.config import hydra_config

    tree, hydra = config_tree(cfg), hydra_config()
    if hydra is None or run_dir is None:
        rich.print(tree)
        return
    choices = {
        g: c
        for g, c in hydra.runtime.choices.items()
        if not g.startswith("hydra") and g != "local" and c not in (None, "null")
    }
    choices = {g: choices[g] for g in sorted(choices, key=lambda g: (CONFIG_ORDER + (g,)).index(g))}
    rich.print("[bold]" + " ".join(f"{g}={c}" for g, c in choices.items()) + "[/bold]")
    if hydra.overrides.task:
        rich.print("overrides: " + " ".join(hydra.overrides.task))
    path = Path(run_dir) / "config_tree.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    rich.console.Console(file=text, width=120, color_system=None).print(tree)
    path.write_text(text.getvalue())
    rich.print(f"the resolved config: {path}")


def print_parameters(counts: dict[str, dict[str, int]], strategy: str) -> None:
    """Total and trainable parameters per component (in place of Lightning's model summary)."""
    table = Table(title=f"parameters (strategy={strategy})")
    for col in ("component", "total", "trainable", "%"):
        table.add_column(col, justify="left" if col == "component" else "right")
    everything = {k: sum(c[k] for c in counts.values()) for k in ("total", "trainable")}
    for component, c in [*counts.items(), ("all", everything)]:
        share = 100 * c["trainable"] / c["total"] if c["total"] else 0.0
        table.add_row(component, f"{c['total']:,}", f"{c['trainable']:,}", f"{share:.1f}")
    rich.print(table)


class _DropLibraryNotices(logging.Filter):
    NOTICES = ("litlogger",)  # Lightning's advertisement, printed by every Trainer

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOTICES)


def quiet_library_notices() -> None:
    """Silence what the libraries print on every run that says nothing about it."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLibraryNotices) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLibraryNotices())
    if logging.getLogger().handlers:  # Hydra's handlers (console + run log) show Lightning's lines once
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            library = logging.getLogger(name)
            library.handlers = [h for h in library.handlers if type(h) is not logging.StreamHandler]
            library.propagate = True
    if not sys.stderr.isatty():  # transformers' weight-loading bar, in a log file: one line of noise per load
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    # Lightning 2.6 on torch 2.13, once per Trainer: not ours to fix, nothing to act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def print_results(results: dict) -> None:
    target, upstream = results["target"], results["upstream"]
    metric = {name: results.get("metrics", {}).get(name, {}).get("name", "") for name in (target, *upstream)}
    shared = len(set(metric.values())) == 1  # one metric: said once in the title, so 80 columns hold four sets
    table = Table(
        title=f"{results['run']['strategy']} on {target} (target) | upstream: "
        f"{', '.join(upstream) or 'none'} ({f'{metric[target]}, ' if shared and metric[target] else ''}scores in %)"
    )
    table.add_column("model")
    for name in (target, *upstream):
        header = [name, "(target)" if name == target else "", "" if shared else metric[name]]
        table.add_column("\n".join(h for h in header if h), justify="right")
    for col in ("S_t", "S_u", "H"):
        table.add_column(col, justify="right")
    changed = "merged" if "merge" in results["run"] else "fine-tuned" if results.get("global_steps") else "evaluated"
    rows = [("zero-shot", "zeroshot"), (changed, "final")]
    for label, key in rows:
        scores, trade = results["scores"].get(key), results["tradeoff"].get(key)
        if scores is None:
            continue
        table.add_row(
            label, *(_number(scores[n]) for n in (target, *upstream)), *(_number(trade[k]) for k in ("S_t", "S_u", "H"))
        )
    rich.print(table)
    final = results["tradeoff"]["final"]
    if final.get("O") is not None:
        rich.print(
            f"E (target gain) = {final['E']:+.1f}   F (upstream change) = {final['F']:+.1f}   "
            f"O = E + F = {final['O']:+.1f}"
        )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def progress(items: Iterable, description: str, total: int, min_total: int = 500) -> Iterator:
    """A progress bar on a terminal for work that can take a while; silent elsewhere (logs, tests) and
    for fewer than ``min_total`` items."""
    if total < min_total or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(
        items, description=description, total=total, transient=True, console=rich.console.Console(stderr=True)
    )
