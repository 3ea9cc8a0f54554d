"""A LLaVA-1.5-7B-shaped model on one GPU: tokens/s, MFU, step ÷ full and peak memory per strategy.

    make bench-gpu                                   # = python bench/gpu.py (one GPU, ~5 minutes on an H100)
    python bench/gpu.py --strategies full spider --scopes llm --steps 20 --switches packing
    python bench/gpu.py --shape small --device cpu   # the same code path on a CPU in seconds (tested)

The model is LLaVA-1.5-7B's architecture (``conf/model/llava15_7b.yaml``: CLIP ViT-L/14-336, the
2-layer MLP projector, Vicuna-7B) built from its config directly on the GPU with random bf16 weights,
so nothing is downloaded; its processor is the tiny LLaVA's tokenizer with a 336-px image processor
(576 image tokens per image, as the real one). Every strategy trains it through ``mllmft-train``'s
module and trainer (``hardware=gpu``, ``bf16-true``) on the same digits batches, for two scopes:
the projector + the last 2 LLM layers (SPIDER's recipe) and the whole LLM. Then ``full`` again with each
memory switch (``SWITCHES``): the logits of every position (what answer-only logits, the default, save),
activation checkpointing, packed batches.

Per strategy and scope it prints the median step time (``torch.cuda.synchronize`` at each step's
end; data loading, hooks and the optimizer included) after warm-up, tokens/s (LLM tokens, image
tokens included), MFU, the step ÷ full's on the same scope and the peak memory
(``torch.cuda.max_memory_allocated``, reset before each run).

MFU = (6 · N_trainable · tokens + 2 · N_frozen · tokens) / step time / the GPU's bf16 dense peak,
each parameter counted with the tokens of its component (vision tower: patches + CLS per image;
projector: image tokens; LLM: all tokens; the LLM's input embedding, a lookup, is left out). Like the
issue's definition it leaves out attention's own FLOPs and the backward through frozen layers that
lie between trainable ones, so it is a lower bound on the work done.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from unittest import mock

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("WANDB_MODE", "offline")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from mllmft import api, build  # noqa: E402
from mllmft.backbones import Backbone, build_tiny  # noqa: E402
from mllmft.backbones.llava import component_map  # noqa: E402
from mllmft.packing import batch_tokens  # noqa: E402

STRATEGIES = ["full", "spider", "magnitude_mask", "gmt", "model_dowser"]
SCOPES = ["connector_llm_last2", "llm"]
# a strategy's set-up that happens once, before the timed steps, kept short (its step cost is the same)
SET_UP = {
    "model_dowser": ["strategy.sequences=8", "strategy.length=16", "strategy.passes=2", "strategy.cache_dir=null"]
}
# full's rows with one setting changed: what each costs or saves against the default full
SWITCHES = {
    "logits=all": ["module.logits=all"],
    "checkpointing": ["model.gradient_checkpointing=true"],
    "packing": ["module.packing=true"],
}
# bf16 dense tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name()
BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L40S": 362.1e12}


def _architecture(shape: str) -> dict:
    """LLaVA-1.5-7B's stored architecture, or the same layout scaled down for a CPU check."""
    arch = OmegaConf.to_container(api.compose(["model=llava15_7b"]).model.architecture, resolve=True)
    if shape == "small":
        vision, text = arch["vision_config"], arch["text_config"]
        vision.update(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=56)
        text.update(
            hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4
        )
    return arch


def random_backbone(arch: dict, device: str) -> Backbone:
    """The architecture with random bf16 weights, built on ``device``; the tiny LLaVA's processor
    (tokenizer ids fit in the 32064-entry vocabulary) at the architecture's image and patch size."""
    vision = arch["vision_config"]
    spec = dict(
        OmegaConf.to_container(api.compose().model.tiny),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
    )
    tiny = build_tiny("llava", spec)
    tokens = tiny.model.config.text_config
    config = LlavaConfig(
        **{
            **arch,
            "image_token_id": tiny.model.config.image_token_id,
            "text_config": {
                **arch["text_config"],
                "pad_token_id": tokens.pad_token_id,
                "bos_token_id": tokens.bos_token_id,
                "eos_token_id": tokens.eos_token_id,
            },
        }
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config = tiny.model.generation_config
    return Backbone(model, tiny.processor, "llava", component_map(model), source=f"random ({device}, bf16)")


class CudaStepTimer(L.Callback):
    """Wall time between consecutive step ends (the device synchronised), and each step's tokens."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self.llm_tokens, self.images = warmup, [], [], []
        self._last = 0.0

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_start(self, trainer, pl_module):
        self._sync(pl_module)
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        now = time.perf_counter()
        if batch_idx >= self.warmup:
            self.times.append(now - self._last)
            self.llm_tokens.append(batch_tokens(batch))  # padding left out
            self.images.append(int(batch["model_inputs"]["pixel_values"].shape[0]))
        self._last = now


def step_flops(backbone: Backbone, llm_tokens: float, images: float) -> float:
    """6·N·tokens for trainable parameters, 2·N·tokens for frozen ones, per component's tokens."""
    vision = backbone.model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens = {"vision": images * (patches + 1), "connector": images * patches, "llm": llm_tokens}
    embeddings = backbone.components.embeddings
    flops = 0.0
    for name, p in backbone.model.named_parameters():
        if name.startswith(embeddings):
            continue
        flops += (6 if p.requires_grad else 2) * p.numel() * tokens[backbone.components.component_of(name)]
    return flops


def measure(arch: dict, strategy: str, scope: str, args, switch: str | None = None) -> dict:
    hardware = ["hardware=gpu" if args.device == "cuda" else "hardware=cpu", "hardware.precision=bf16-true"]
    cfg = api.compose(
        [
            *hardware,
            "model.pretrain=null",
            f"strategy={strategy}",
            *SET_UP.get(strategy, []),
            f"scope={scope}",
            "logger=none",
            "callbacks=none",
            "print_config=false",
            f"trainer.max_steps={args.steps + args.warmup}",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.log_every_n_steps=1000000",
            f"data.batch_size={args.batch_size}",
            "data.max_length=1024",
            *SWITCHES.get(switch or "", []),
        ],
        output_dir=f"logs/bench/gpu/{scope}/{strategy}" + (f"+{switch}" if switch else ""),
    )
    backbone = random_backbone(arch, args.device)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # the run's own loader knows checkpoints and tiny models; this random real-size one is the bench's
    with mock.patch.object(build, "build_backbone", return_value=backbone):
        parts = api.build(cfg)
    timer = CudaStepTimer(args.warmup)
    parts.trainer.callbacks.append(timer)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    step = statistics.median(timer.times)
    llm_tokens, images = statistics.fmean(timer.llm_tokens), statistics.fmean(timer.images)
    result = {
        "step_s": step,
        "tokens_per_s": llm_tokens / step,
        "flop_per_s": step_flops(parts.backbone, llm_tokens, images) / step,
        "trainable": sum(p.numel() for p in parts.backbone.model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in parts.backbone.model.parameters()),
        "peak_bytes": torch.cuda.max_memory_allocated() if args.device == "cuda" else None,
    }
    del parts, backbone
    gc.collect()  # the trainer and the module refer to each other: free the 7B model before the next one
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--scopes", nargs="+", default=SCOPES)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shape", choices=["llava15_7b", "small"], default="llava15_7b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--switches", nargs="*", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--peak-tflops", type=float, help="the GPU's bf16 dense peak, if not in BF16_PEAK")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: install the CUDA build of torch, or check the code path with --device cpu")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in BF16_PEAK.items() if k in name), None)
    arch = _architecture(args.shape)
    names = ["full", *[s for s in args.strategies if s != "full"]]
    rows = []
    for scope in args.scopes:
        results = {s: measure(arch, s, scope, args) for s in names}
        results |= {f"full+{w}": measure(arch, "full", scope, args, w) for w in args.switches}
        for s in results:
            rows.append((scope, s, results[s], results[s]["step_s"] / results["full"]["step_s"]))
    total = rows[0][2]["total"]
    print(f"\n{name}, torch {torch.__version__}, LLaVA-1.5-7B shape={args.shape} ({total / 1e9:.2f} B parameters)")
    over = f"{peak / 1e12:.1f} TFLOP/s (bf16 dense peak)" if peak else "unknown: pass --peak-tflops"
    print(f"batch {args.batch_size}, bf16-true, {args.steps} timed steps after {args.warmup}; MFU over {over}")
    head = f"{'scope':20s} {'strategy':15s} {'trainable':>14s} {'step ms':>9s} {'tokens/s':>9s}"
    print(f"{head} {'MFU':>6s} {'÷ full':>7s} {'peak GiB':>9s}")
    for scope, s, r, ratio in rows:
        mfu = f"{r['flop_per_s'] / peak:6.3f}" if peak else f"{'-':>6s}"
        memory = f"{r['peak_bytes'] / 2**30:9.1f}" if r["peak_bytes"] is not None else f"{'-':>9s}"
        line = f"{scope:20s} {s:15s} {r['trainable']:14,d} {1000 * r['step_s']:9.1f} {r['tokens_per_s']:9.0f}"
        print(f"{line} {mfu} {ratio:7.3f} {memory}")


if __name__ == "__main__":
    main()
