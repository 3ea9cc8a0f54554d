"""Mask diagnostics: density (share of entries that may move) and mean mask value, per component and
per layer, logged during training and drawn as a per-layer density heatmap at the end. Counts are
taken on each rank's fragments and reduced through the engine, so they are the whole tensors'."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from mllmft.backbones import ComponentMap
from mllmft.strategies.core import tensor_stats


def group_of(cmap: ComponentMap, name: str) -> str:
    """ "llm.layer3", "vision.layer0", "connector", "llm" (outside the layer stack) ..."""
    component = cmap.component_of(name)
    layer = cmap.layer_of(name, component)
    return component if layer is None else f"{component}.layer{layer}"


class MaskStats:
    """Collects (nonzero, sum, numel) of masks during a step, then summarises them."""

    def __init__(self, cmap: ComponentMap, engine=None):
        self.cmap = cmap
        self.engine = engine
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, {layer group: density})
        self._counts: dict[str, torch.Tensor] = {}

    @property
    def pending(self) -> bool:
        return bool(self._counts)

    def add(self, name: str, mask: torch.Tensor) -> None:
        total = tensor_stats.float64_sums(mask.reshape(-1), squares=False)
        row = torch.stack(
            [
                torch.count_nonzero(mask).double(),
                total,
                torch.tensor(float(mask.numel()), dtype=torch.float64, device=mask.device),
            ]
        )
        for key in (self.cmap.component_of(name), group_of(self.cmap, name)):
            self._counts[key] = self._counts.get(key, 0) + row

    def summarise(self, step: int) -> dict[str, float]:
        """{"mask/density/<group>": ..., "mask/mean/<group>": ...}; records the layer densities.
        Every rank must call it at the same steps (the counts are reduced)."""
        out, layers = {}, {}
        keys = sorted(self._counts)
        counts = torch.stack([self._counts[k] for k in keys]) if keys else torch.zeros(0, 3)
        if self.engine is not None:
            self.engine.all_reduce(counts)
        for key, (nonzero, total, numel) in zip(keys, counts.tolist()):
            out[f"mask/density/{key}"] = nonzero / numel
            out[f"mask/mean/{key}"] = total / numel
            if ".layer" in key or key == "connector":
                layers[key] = nonzero / numel
        self._counts = {}
        if layers:
            self.history.append((step, layers))
        return out

    def save_heatmap(self, path: Path, title: str) -> Path | None:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def order(g: str):
            comp, _, layer = g.partition(".layer")
            return ({"vision": 0, "connector": 1, "llm": 2}.get(comp, 3), int(layer or -1))

        groups = sorted({g for _, row in self.history for g in row}, key=order)
        grid = defaultdict(list)
        for _, row in self.history:
            for g in groups:
                grid[g].append(row.get(g, float("nan")))
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(groups) + 1.5))
        image = ax.imshow(
            [grid[g] for g in groups], aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest"
        )
        ax.set_yticks(range(len(groups)), groups)
        steps = [s for s, _ in self.history]
        ticks = sorted({0, len(steps) // 2, len(steps) - 1})
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label="mask density (share of entries allowed to move)")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
