"""Model-Dowser (ICML 2026, arXiv 2602.04509): data-free importance probing, a static sparse gradient
mask. Selective method group. The choices where the paper leaves one:

* Scored: the weight of every LLM decoder-block linear named in ``targets`` (q, k, v, o, gate, up,
  down), whether or not the scope trains it, so one probe of a base model serves every scope, ratio
  and task; cached in ``<cache_dir>/model_dowser/`` by the base weights' fingerprint and the probe's
  knobs (a sweep probes once; 4 bytes per scored weight on disk and, while probing, on the host).
  Text-only probing (the official recipe), on the GPU when there is one.
* Mask: in each targeted tensor the scope trains, exactly round(ρ·numel) lowest-scoring entries are
  trainable (ties broken by position, so the share is exactly ρ; the code's "≤ k-th" would take all
  tied entries); applied to the gradient before every step, for the whole run. Other trainable
  parameters of those layers (norms, biases) train densely; the LM head is frozen (the VILA script's
  choice; ``freeze_head: false`` keeps the scope's).
* AdamW's weight decay would move the masked entries: the strategy requires module.weight_decay = 0
  (the recipe's), and then they never move (their gradient and moments are exactly zero).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn

from mllmft.backbones import Backbone
from mllmft.checkpoint_match import weights_fingerprint
from mllmft.checks import check_number, check_seed
from mllmft.errors import ConfigError
from mllmft.hardware import on_compute_device
from mllmft.strategies.core.contract import TuningStrategy, tensor_nbytes
from mllmft.strategies.core.tensor_stats import lowest_entries
from mllmft.strategies.selective.dowser_probe import PSI_MODES, probe_scores, synthetic_sequences

log = logging.getLogger(__name__)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelDowser(TuningStrategy):
    """Model-Dowser: exactly ``ratio`` of each LLM linear's entries train, those the data-free probe scores
    lowest (output sensitivity × |W| × input activation); the rest held by a static gradient mask."""

    def __init__(
        self,
        ratio: float = 0.1,
        sequences: int = 64,
        length: int = 64,
        batch_size: int = 4,
        passes: int = 8,
        psi: str = "abs",
        targets: tuple[str, ...] = TARGETS,
        seed: int = 0,
        freeze_head: bool = True,
        cache_dir: str | None = None,
        weight_decay: float = 0.0,
    ):
        check_number("strategy.ratio", ratio, 0, 1, low_open=True)
        for key, value in (("sequences", sequences), ("batch_size", batch_size), ("passes", passes)):
            check_number(f"strategy.{key}", value, 1, integer=True)
        check_number("strategy.length", length, 8, integer=True)
        check_seed("strategy.seed", seed)
        if psi not in PSI_MODES:
            raise ConfigError(f"strategy.psi={psi!r}; expected one of {PSI_MODES}")
        if weight_decay:
            raise ConfigError(
                f"strategy=model_dowser freezes entries by masking their gradient, which AdamW's weight "
                f"decay would still move: set module.weight_decay=0 (got {weight_decay})"
            )
        self.ratio, self.sequences, self.length, self.batch_size = ratio, sequences, length, batch_size
        self.passes, self.psi, self.targets, self.seed = passes, psi, tuple(targets), seed
        self.freeze_head = freeze_head
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.masks: dict[str, torch.Tensor] = {}  # this rank's part, bool
        self._whole_masks: dict[str, torch.Tensor] = {}
        self.probed = False  # whether this run probed (False: the cache served)
        self.probe_seconds = 0.0
        self.scores_path: str | None = None

    # --- before training: probe (or read the cache), choose the masks --------------------------------
    def attach(self, backbone: Backbone) -> None:
        model = backbone.model
        if self.freeze_head:
            for p in model.get_submodule(backbone.components.head).parameters():
                p.requires_grad_(False)
        layers = backbone.components.layers["llm"]
        scored = {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith(layers + ".") and name.rsplit(".", 1)[-1] in self.targets
        }
        trained = {name for name, m in scored.items() if m.weight.requires_grad}
        if not trained:
            raise ConfigError(
                f"strategy=model_dowser masks the LLM's {list(self.targets)} linears, and the scope "
                "trains none of them: use a scope that trains LLM layers (e.g. scope=llm_last_n)"
            )
        scores = self._scores(backbone, scored)
        self._whole_masks = {f"{name}.weight": lowest_entries(scores[name], self.ratio) for name in sorted(trained)}

    def _scores(self, backbone: Backbone, scored: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return self._probe(backbone, scored)
        knobs = {
            "probe": 2,  # the probe's own version: 2 scores what the model wrote only, as the authors' code
            "sequences": self.sequences,
            "length": self.length,
            "batch_size": self.batch_size,
            "passes": self.passes,
            "psi": self.psi,
            "seed": self.seed,
            "targets": sorted(scored),
        }
        key = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]
        fingerprint = weights_fingerprint(backbone.model)
        path = self.cache_dir / "model_dowser" / f"{backbone.family}-{fingerprint}-{key}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.scores_path = str(path)
        with FileLock(path.with_suffix(".lock")):  # parallel jobs (or ranks) probe once
            if path.is_file():
                log.info("Model-Dowser: scores from %s", path)
                return load_file(str(path))
            scores = self._probe(backbone, scored)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            save_file(scores, str(tmp))
            os.replace(tmp, path)
            log.info("Model-Dowser: scores cached in %s", path)
            return scores

    def _probe(self, backbone: Backbone, scored: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
        model = backbone.model
        generator = torch.Generator().manual_seed(self.seed)
        started = time.perf_counter()
        with on_compute_device(model):  # the GPU when there is one: fitting has not started yet
            batches = synthetic_sequences(
                model, backbone.processor.tokenizer, self.sequences, self.length, self.batch_size, generator
            )
            scores = probe_scores(model, scored, batches, self.passes, self.psi, generator)
        self.probed, self.probe_seconds = True, round(time.perf_counter() - started, 3)
        log.info(
            "Model-Dowser: probed %d linears on %d synthetic sequences x %d passes in %.1f s",
            len(scored),
            self.sequences,
            self.passes,
            self.probe_seconds,
        )
        return scores

    # --- training: the static gradient mask -----------------------------------------------------------
    def start(self, ctx) -> None:
        self.masks = {
            f.name: f.copy_part(self._whole_masks[f.name]) for f in ctx.fragments if f.name in self._whole_masks
        }
        self._whole_masks = {}  # this rank keeps its parts only (a resumed run probes, or reads the cache, again)

    def before_step(self, ctx) -> None:
        for f in ctx.fragments:
            mask, grad = self.masks.get(f.name), f.grad()
            if mask is None or grad is None:
                continue
            grad.mul_(mask.to(grad.dtype))
            if ctx.logging:
                ctx.mask_stats.add(f.name, mask)

    def summary(self) -> dict:
        return {
            "probed": self.probed,
            "probe_seconds": self.probe_seconds,
            "scores": self.scores_path,
            "trainable_share": self.ratio,
        }

    def state_nbytes(self) -> int:
        return tensor_nbytes(self.masks, self._whole_masks)  # bool: 1 byte per masked parameter
