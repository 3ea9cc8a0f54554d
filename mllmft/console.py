"""What a run prints: the resolved config at start, the score table at the end."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import rich
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from rich.tree import Tree

CONFIG_ORDER = ("model", "scope", "strategy", "data", "hardware", "trainer", "module", "callbacks",
                "logger", "paths")


def print_config(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(text.rstrip() or "null")
    rich.print(tree)


def print_results(results: dict) -> None:
    target, upstream = results["target"], results["upstream"]
    table = Table(title=f"{results['run']['strategy']} on {target} (target) | upstream: "
                        f"{', '.join(upstream) or 'none'}  [exact match, %]")
    table.add_column("model")
    for name in (target, *upstream):
        table.add_column(f"{name}{' (target)' if name == target else ''}", justify="right")
    for col in ("S_t", "S_u", "H"):
        table.add_column(col, justify="right")
    rows = [("zero-shot", "zeroshot"), ("fine-tuned", "final")]
    for label, key in rows:
        scores, trade = results["scores"].get(key), results["tradeoff"].get(key)
        if scores is None:
            continue
        table.add_row(label, *(_number(scores[n]) for n in (target, *upstream)),
                      *(_number(trade[k]) for k in ("S_t", "S_u", "H")))
    rich.print(table)
    final = results["tradeoff"]["final"]
    if final.get("O") is not None:
        rich.print(f"E (target gain) = {final['E']:+.1f}   F (upstream change) = {final['F']:+.1f}   "
                   f"O = E + F = {final['O']:+.1f}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def progress(items: Iterable, description: str, total: int, min_total: int = 500) -> Iterator:
    """A progress bar on a terminal for work that can take a while; silent elsewhere (logs, tests) and
    for fewer than ``min_total`` items."""
    if total < min_total or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True,
                     console=rich.console.Console(stderr=True))
