"""Which parameters may train, and at which learning rate: one rule per component.

A scope is a mapping ``{component: {train, lr_scale, last_n_layers, modules}}`` for the components
``vision``, ``connector`` and ``llm`` (a missing component stays frozen). ``last_n_layers`` trains
only the component's last N blocks (nothing else of it: no embeddings, final norm or head).
``modules`` trains only some modules of each block, by role (the component presets of arXiv
2510.08564): ``attention`` (the query, key, value and output projections) or ``mlp_gate_up`` (the
feed-forward's gate and up projections: every MLP linear but the one that closes the block; OPT's
``fc1``), named per text architecture in backbones/decoder_layers.py; a layer of no known naming is
refused at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from mllmft.backbones import COMPONENTS, Backbone
from mllmft.backbones.decoder_layers import FEEDFORWARD_OUTPUTS, detect_layer_names
from mllmft.checks import check_bool, check_number
from mllmft.errors import ConfigError

RULE_KEYS = {"train", "lr_scale", "last_n_layers", "modules"}
MODULE_PRESETS = ("attention", "mlp_gate_up")


def apply_scope(backbone: Backbone, scope: Mapping) -> None:
    """Set ``requires_grad`` on every parameter of the backbone from the scope's rules."""
    unknown = set(scope) - set(COMPONENTS)
    if unknown:
        raise ConfigError(f"scope names unknown components {sorted(unknown)}; expected {COMPONENTS}")
    cmap = backbone.components
    last_n, modules = {}, {}
    for component, rule in scope.items():
        bad = set(rule or {}) - RULE_KEYS
        if bad:
            raise ConfigError(f"scope.{component} has unknown keys {sorted(bad)}; expected {sorted(RULE_KEYS)}")
        rule = rule or {}
        check_bool(f"scope.{component}.train", rule.get("train", False))
        check_number(f"scope.{component}.lr_scale", rule.get("lr_scale", 1.0), 0, low_open=True)
        n = rule.get("last_n_layers")
        if n is not None:  # 0 is an error, not "every layer"
            total = backbone.num_layers(component)
            check_number(f"scope.{component}.last_n_layers", n, 1, total, integer=True)
            last_n[component] = total - n
        if rule.get("modules") is not None:
            modules[component] = _preset_modules(backbone, component, rule["modules"])
    for name, param in backbone.model.named_parameters():
        component = cmap.component_of(name)
        rule = scope.get(component) or {}
        trainable = bool(rule.get("train", False)) and not cmap.is_inert(name)
        if trainable and component in last_n:
            layer = cmap.layer_of(name, component)
            trainable = layer is not None and layer >= last_n[component]
        if trainable and component in modules:  # in a block, and the module holding it has the role
            trainable = cmap.layer_of(name, component) is not None and name.split(".")[-2] in modules[component]
        param.requires_grad_(trainable)


def _preset_modules(backbone: Backbone, component: str, preset: str) -> set[str]:
    """The short names of the modules of ``preset``'s role in ``component``'s blocks."""
    if preset not in MODULE_PRESETS:
        raise ConfigError(f"scope.{component}.modules={preset!r}; expected one of {list(MODULE_PRESETS)}")
    path = backbone.components.layers.get(component)
    if path is None:
        raise ConfigError(f"scope.{component}.modules={preset}: the {component} has no layer list to pick from")
    block = backbone.model.get_submodule(path)[0]
    roles = detect_layer_names(name for name, _ in block.named_modules())
    if not roles:
        raise ConfigError(
            f"scope.{component}.modules={preset}: the {backbone.family} family's {component} layers name their "
            "modules in no convention mllmft knows (backbones/decoder_layers.py lists them)"
        )
    if preset == "attention":
        return set(roles["attention"])
    return {m for m in roles["mlp"] if m not in FEEDFORWARD_OUTPUTS}


def param_groups(backbone: Backbone, scope: Mapping, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups over trainable parameters only: one per component (its lr_scale), and within it
    one without weight decay for biases and norm gains (1-D tensors)."""
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in backbone.model.named_parameters():
        if not param.requires_grad:
            continue
        component = backbone.components.component_of(name)
        decay = param.ndim >= 2
        key = (component, decay)
        if key not in groups:
            scale = float((scope.get(component) or {}).get("lr_scale", 1.0))
            groups[key] = {
                "name": component if decay else f"{component}.no_decay",
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())
