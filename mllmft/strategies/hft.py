"""HFT, Half Fine-Tuning (Hui et al., 2024). Selective family.

In every LLM decoder layer, freeze a random 2 of the 4 attention projections, 2 of the 3 MLP
projections in half of the layers and 1 in the other half, and 1 of the 2 norms. Embeddings and
head are left as the scope set them. Seeded and static for the run.
"""

from __future__ import annotations

import random

from mllmft.backbones import Backbone
from mllmft.errors import ConfigError
from mllmft.strategies.base import TuningStrategy


class HFT(TuningStrategy):
    name = "hft"

    def __init__(self, seed: int = 0, attention: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj"),
                 norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")):
        self.seed = seed
        self.groups = {"attention": tuple(attention), "mlp": tuple(mlp), "norms": tuple(norms)}
        self.frozen: list[str] = []  # module paths frozen by HFT

    def attach(self, backbone: Backbone) -> None:
        rng = random.Random(self.seed)
        layers_path = backbone.components.layers["llm"]
        layers = backbone.model.get_submodule(layers_path)
        n = len(layers)
        mlp_two = set(rng.sample(range(n), n // 2))
        for i, layer in enumerate(layers):
            names = {name for name, _ in layer.named_modules()}
            counts = {"attention": 2, "mlp": 2 if i in mlp_two else 1, "norms": 1}
            for group, modules in self.groups.items():
                missing = [m for m in modules if not any(x.split(".")[-1] == m for x in names)]
                if missing:
                    raise ConfigError(f"strategy=hft: layer {i} of {layers_path} has no modules {missing}; "
                                      f"set strategy.{group} to this family's module names")
                for module in rng.sample(modules, counts[group]):
                    path = next(x for x in sorted(names) if x.split(".")[-1] == module)
                    for p in layer.get_submodule(path).parameters():
                        p.requires_grad_(False)
                    self.frozen.append(f"{layers_path}.{i}.{path}")
