"""HFT, Half Fine-Tuning (Hui et al., 2024). Selective method group.

In every LLM decoder layer, freeze a random 2 of the 4 attention projections, 2 of the 3 MLP
projections in half of the layers and 1 in the other half (1 of 2 in a two-matrix MLP such as OPT's),
and 1 of the 2 norms. Embeddings and head are left as the scope set them. Seeded and static for the
run. Module names: given, or the first known naming scheme the layers have
(``mllmft.backbones.decoder_layers``: Llama-style, OPT).
"""

from __future__ import annotations

import random

from torch import nn

from mllmft.backbones import Backbone
from mllmft.backbones.decoder_layers import detect_layer_names, missing_modules
from mllmft.checks import check_seed
from mllmft.errors import ConfigError
from mllmft.strategies.core.contract import TuningStrategy


class HFT(TuningStrategy):
    """Half Fine-Tuning: a seeded, static half of each LLM decoder layer's projections and norms frozen."""

    def __init__(
        self,
        seed: int = 0,
        attention: tuple[str, ...] | None = None,
        mlp: tuple[str, ...] | None = None,
        norms: tuple[str, ...] | None = None,
    ):
        check_seed("strategy.seed", seed)
        self.seed = seed
        self.given = {"attention": attention, "mlp": mlp, "norms": norms}
        self.groups: dict[str, tuple[str, ...]] = {}
        self.frozen: list[str] = []  # module paths frozen by HFT

    def _module_names(self, layer_names: set[str]) -> dict[str, tuple[str, ...]]:
        detected = detect_layer_names(layer_names)
        return {g: tuple(given) if given else detected.get(g, ()) for g, given in self.given.items()}

    def attach(self, backbone: Backbone) -> None:
        rng = random.Random(self.seed)
        layers_path = backbone.components.layers["llm"]
        layers = backbone.model.get_submodule(layers_path)
        assert isinstance(layers, nn.ModuleList), f"{layers_path} is a {type(layers).__name__}"
        n = len(layers)
        mlp_two = set(rng.sample(range(n), n // 2))
        self.groups = self._module_names({name for name, _ in layers[0].named_modules()})
        three = len(self.groups["mlp"]) == 3  # a two-matrix MLP loses one of them in every layer
        for i, layer in enumerate(layers):
            names = {name for name, _ in layer.named_modules()}
            counts = {"attention": 2, "mlp": (2 if i in mlp_two else 1) if three else 1, "norms": 1}
            for group, modules in self.groups.items():
                missing = missing_modules(names, modules)
                if missing or not modules:
                    raise ConfigError(
                        f"strategy=hft: layer {i} of {layers_path} has no modules {missing or group}; "
                        f"set strategy.{group} to this family's module names"
                    )
                for module in rng.sample(modules, counts[group]):
                    path = next(x for x in sorted(names) if x.split(".")[-1] == module)
                    for p in layer.get_submodule(path).parameters():
                        p.requires_grad_(False)
                    self.frozen.append(f"{layers_path}.{i}.{path}")
