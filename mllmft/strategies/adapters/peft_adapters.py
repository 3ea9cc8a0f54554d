"""Additive and reparameterisation tuning through the ``peft`` library (LoRA and relatives).

The scope decides which components may change; the strategy decides how:

* components listed in ``adapt`` (default: the LLM) get adapters on the linears of their decoder
  blocks that the scope left trainable (so ``scope.llm.last_n_layers`` becomes peft's set of
  transformed layers); their other weights (embeddings, norms, head) stay frozen, as in LoRA;
* every other trainable component is trained fully and registered as peft ``modules_to_save``
  (the connector, as LLaVA does), so a saved adapter carries it;
* bare parameters that peft cannot wrap (BLIP-2's ``query_tokens``, LLaVA-NeXT's
  ``image_newline``) still train; only ``export=merged`` can carry them.

After ``attach`` the backbone's model is the ``PeftModel`` and its component map is re-rooted under
``base_model.model.`` (``base_model.`` for prompt learning), so parameter groups, counts and
checkpoints work unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import peft
from lightning import Callback
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from mllmft.backbones import COMPONENTS, Backbone
from mllmft.backbones.decoder_layers import FEEDFORWARD_OUTPUTS
from mllmft.checks import check_number, check_seed
from mllmft.errors import ConfigError
from mllmft.strategies.core.contract import TuningStrategy

PEFT_ROOT = "base_model.model."  # where the wrapped model's names start (adapter methods)
PROMPT_LEARNING_ROOT = "base_model."


class PeftStrategy(TuningStrategy):
    """Wrap the backbone with ``peft.get_peft_model`` using the config ``peft_config`` builds."""

    targets_linears = True  # False: prompt-learning methods, which add virtual tokens instead
    # why the base less the adapters is not the pre-trained model (the initialisation moved part of the base
    # into them: PiSSA, OLoRA, KORE); empty: disabling the adapters gives the base back
    moves_base = ""
    adapter_buffers = False  # frozen adapter factors held as buffers (KORE's A)

    def __init__(
        self,
        adapt: Sequence[str] = ("llm",),
        linears: Sequence[str] | None = None,
        layers_to_transform: Sequence[int] | None = None,
    ):
        unknown = set(adapt) - set(COMPONENTS)
        if unknown:
            raise ConfigError(f"strategy.adapt names unknown components {sorted(unknown)}; expected {COMPONENTS}")
        for i, layer in enumerate(layers_to_transform or ()):
            check_number(f"strategy.layers_to_transform[{i}]", layer, 0, integer=True)
        self.adapt = tuple(adapt)
        self.linears = tuple(linears) if linears else None
        self.layers_to_transform = set(layers_to_transform) if layers_to_transform is not None else None
        self.bare_parameters: list[str] = []
        self.target_modules: list[str] = []
        self.modules_to_save: list[str] = []

    def peft_config(self, target_modules: list[str], modules_to_save: list[str]) -> peft.PeftConfig:
        raise NotImplementedError

    def attach(self, backbone: Backbone) -> None:
        model, cmap = backbone.model, backbone.components
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if self.targets_linears:
            self.target_modules = self._target_linears(backbone, trainable)
        adapted = {n for n in trainable if cmap.component_of(n) in self.adapt}
        self.modules_to_save, self.bare_parameters = _modules_covering(model, trainable - adapted)
        config = self.peft_config(self.target_modules, self.modules_to_save)
        backbone.model = peft.get_peft_model(model, config)
        backbone.model.mllmft_moves_base = self.moves_base  # read by objectives.base.base_model
        # adapter methods put a tuner (LoraModel, ...) between the PeftModel and the model
        root = PEFT_ROOT if isinstance(backbone.model.base_model, BaseTuner) else PROMPT_LEARNING_ROOT
        for name, param in backbone.model.named_parameters():  # peft froze them; the scope trains them
            if name.removeprefix(root) in self.bare_parameters:
                param.requires_grad_(True)
        backbone.components = cmap.rerooted(root)

    def _target_linears(self, backbone: Backbone, trainable: set[str]) -> list[str]:
        cmap, targets = backbone.components, []
        for component in self.adapt:
            blocks = cmap.layers.get(component)
            for name, module in backbone.model.named_modules():
                if not (isinstance(module, nn.Linear) and blocks and name.startswith(blocks + ".")):
                    continue
                if f"{name}.weight" not in trainable:  # the scope freezes it (e.g. an earlier layer)
                    continue
                if self.linears and name.rsplit(".", 1)[-1] not in self.linears:
                    continue
                if (
                    self.layers_to_transform is not None
                    and cmap.layer_of(f"{name}.weight", component) not in self.layers_to_transform
                ):
                    continue
                targets.append(name)
        if not targets:
            raise ConfigError(
                f"strategy {self.name}: no trainable linear layer to adapt in {list(self.adapt)} under this scope "
                f"(linears={self.linears}, layers_to_transform={sorted(self.layers_to_transform or [])}); "
                "make the scope train those components or change strategy.adapt"
            )
        return targets

    def state_nbytes(self) -> int:
        return 0  # adapters are parameters (counted as trainable), not extra state


def _modules_covering(model: nn.Module, names: set[str]) -> tuple[list[str], list[str]]:
    """The fewest modules whose parameters are all in ``names`` and together hold all of them, plus
    the parameters no such module holds (they sit on a module that also holds frozen ones). peft
    cannot wrap containers (Qwen3-VL's ``deepstack_merger_list``): their children are taken instead."""
    all_params = [n for n, _ in model.named_parameters()]
    containers = {n for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.ModuleDict))}
    modules: list[str] = []
    bare: list[str] = []
    for name in sorted(names):
        if any(name.startswith(m + ".") for m in modules):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            under = [n for n in all_params if n.startswith(prefix + ".")]
            if prefix not in containers and all(n in names for n in under):
                modules.append(prefix)
                break
        else:
            bare.append(name)
    return modules, bare


# peft's LoraConfig.init_lora_weights: true, false or one of these (peft fails only inside the model's
# wrapping otherwise); pissa_niter_<n> is PiSSA with n subspace iterations
LORA_INITS = ("gaussian", "olora", "pissa", "pissa_niter_<n>", "orthogonal", "mica")
# peft's initialisations that need a step of their own before or after the wrapping, which mllmft does not take
NEEDS_A_RUN = {
    "corda": "peft's preprocess_corda calibration run; strategy=kore starts LoRA in the null space of the "
    "upstream sets' inputs (KORE's constraint, near CorDA's knowledge-preserving mode)",
    "eva": "peft's initialize_lora_eva_weights run over a data loader after the wrapping",
    "loftq": "a quantised base model and peft's loftq_config",
}


def check_lora_init(init) -> None:
    if isinstance(init, bool) or init in LORA_INITS or re.fullmatch(r"pissa_niter_[1-9][0-9]*", str(init)):
        return
    if init in NEEDS_A_RUN:
        raise ConfigError(f"strategy.init={init} needs {NEEDS_A_RUN[init]}, which mllmft does not run: not supported")
    raise ConfigError(f"strategy.init={init!r}; expected true, false or one of {list(LORA_INITS)}")


class LoRA(PeftStrategy):
    """LoRA and its variants: DoRA (``use_dora``), rsLoRA (``use_rslora``), PiSSA/OLoRA/... (``init``)."""

    def __init__(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        init: bool | str = True,
        use_dora: bool = False,
        use_rslora: bool = False,
        **scope_options,
    ):
        super().__init__(**scope_options)
        check_number("strategy.r", r, 1, integer=True)
        check_number("strategy.alpha", alpha, 0, low_open=True)
        check_number("strategy.dropout", dropout, 0, 1, high_open=True)
        check_lora_init(init)
        if isinstance(init, str) and (init.startswith("pissa") or init == "olora"):
            self.moves_base = f"strategy.init={init} starts the adapters from the base's principal part"
        self.options = dict(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights=init,
            use_dora=use_dora,
            use_rslora=use_rslora,
        )

    def peft_config(self, target_modules, modules_to_save):
        return peft.LoraConfig(target_modules=target_modules, modules_to_save=modules_to_save or None, **self.options)


class AdaLoRA(PeftStrategy):
    """AdaLoRA: LoRA whose rank budget is reallocated by importance during training (needs the
    number of steps; peft's ``update_and_allocate`` runs after every optimizer step)."""

    unsharded_only = (
        "peft's rank allocator reads each whole parameter and its .grad, which FSDP shards into DTensors "
        "and DeepSpeed keeps in its own partitioned buffers"
    )

    def __init__(
        self,
        total_step: int,
        init_r: int = 12,
        target_r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        tinit: int = 0,
        tfinal: int = 0,
        delta_t: int = 1,
        **scope_options,
    ):
        super().__init__(**scope_options)
        if total_step is not None:  # its range: below
            check_number("strategy.total_step", total_step, integer=True)
        for key, value, low in (
            ("init_r", init_r, 1),
            ("tinit", tinit, 0),
            ("tfinal", tfinal, 0),
            ("delta_t", delta_t, 1),
        ):
            check_number(f"strategy.{key}", value, low, integer=True)
        check_number("strategy.target_r", target_r, 1, init_r, integer=True)
        check_number("strategy.alpha", alpha, 0, low_open=True)
        check_number("strategy.dropout", dropout, 0, 1, high_open=True)
        if total_step is None or total_step <= tinit + tfinal:
            raise ConfigError(
                f"strategy.total_step={total_step} must exceed tinit + tfinal = {tinit + tfinal} "
                "(AdaLoRA needs a step-based run: set trainer.max_steps)"
            )
        self.options = dict(
            total_step=total_step,
            init_r=init_r,
            target_r=target_r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=delta_t,
        )

    def peft_config(self, target_modules, modules_to_save):
        return peft.AdaLoraConfig(
            target_modules=target_modules, modules_to_save=modules_to_save or None, **self.options
        )

    def callbacks(self) -> list[Callback]:
        return [_AdaLoraBudget()]


class _AdaLoraBudget(Callback):
    """peft's rank reallocation, once per optimizer step: under gradient accumulation a batch that
    only accumulates must not score importance on half a gradient (peft's own loop calls it after
    ``optimizer.step()``). The gradients are still on the parameters then: the module frees them after
    every callback's ``on_train_batch_end`` (``MLLMFineTuner.on_train_batch_end``)."""

    def __init__(self):
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step  # a resumed run continues from its checkpoint's step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # this batch accumulated: no optimizer step yet
        self._last_step = trainer.global_step
        # peft counts the step just taken from 0 (its loop calls it before incrementing)
        pl_module.model.base_model.update_and_allocate(trainer.global_step - 1)


class VeRA(PeftStrategy):
    """VeRA: frozen random low-rank matrices shared across layers, trained scaling vectors."""

    def __init__(self, r: int = 256, dropout: float = 0.0, d_initial: float = 0.1, seed: int = 0, **scope_options):
        super().__init__(**scope_options)
        check_number("strategy.r", r, 1, integer=True)
        check_number("strategy.dropout", dropout, 0, 1, high_open=True)
        check_number("strategy.d_initial", d_initial)
        check_seed("strategy.seed", seed)
        self.options = dict(r=r, vera_dropout=dropout, d_initial=d_initial, projection_prng_key=seed)

    def peft_config(self, target_modules, modules_to_save):
        return peft.VeraConfig(target_modules=target_modules, modules_to_save=modules_to_save or None, **self.options)


class IA3(PeftStrategy):
    """(IA)^3: learned rescaling of attention outputs and of the feed-forward output layer's input."""

    def peft_config(self, target_modules, modules_to_save):
        feedforward = [t for t in target_modules if t.rsplit(".", 1)[-1] in FEEDFORWARD_OUTPUTS]
        return peft.IA3Config(
            target_modules=target_modules, feedforward_modules=feedforward, modules_to_save=modules_to_save or None
        )


class _PromptLearning(PeftStrategy):
    """Trained virtual tokens in front of the LLM's input (its only adapted component); other
    trainable components train fully as ``modules_to_save``."""

    targets_linears = False
    unpacked_only = (
        "peft puts the virtual tokens in front of each row, not of each sample, and drops the position ids that "
        "mark where the samples start"
    )

    def __init__(self, num_virtual_tokens: int = 20):
        super().__init__(adapt=("llm",))
        check_number("strategy.num_virtual_tokens", num_virtual_tokens, 1, integer=True)
        self.num_virtual_tokens = num_virtual_tokens

    def attach(self, backbone: Backbone) -> None:
        super().attach(backbone)
        cmap = backbone.components  # the virtual tokens are input embeddings of the LLM
        backbone.components = dataclasses.replace(cmap, llm=(*cmap.llm, "prompt_encoder"))


class PromptTuning(_PromptLearning):
    """peft's prompt tuning: ``num_virtual_tokens`` trained input embeddings before the prompt."""

    def peft_config(self, target_modules, modules_to_save):
        return peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, modules_to_save=modules_to_save or None
        )


class PrefixTuning(_PromptLearning):
    """peft's prefix tuning: trained key/value prefixes in every LLM attention layer."""

    def peft_config(self, target_modules, modules_to_save):
        return peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, modules_to_save=modules_to_save or None
        )
