"""GPU-only paths: skipped without CUDA. On a GPU machine: `make test-gpu`."""

import pytest
import torch

from mllmft.run import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "bf16-true"])
def test_gpu_training_and_generation(compose, precision):
    results = run(compose("hardware=gpu", f"hardware.precision={precision}", "trainer.max_steps=3"))
    assert results["global_steps"] == 3 and set(results["scores"]["final"]) == {"digits", "shapes"}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_two_gpus(compose):
    cfg = compose("hardware=gpu", "hardware.devices=2", "hardware.lightning_strategy=ddp_spawn")
    results = run(cfg)
    assert results["global_steps"] == 2


@pytest.mark.parametrize("strategy", ["spider", "lora", "commit", "commit_lora"])
def test_gpu_strategies_in_bf16(compose, strategy):
    # state on the parameters' device and dtype (θ0, adapters, CoMMIT's swaps and fp32 KLs)
    export = ["export=merged"] if strategy in ("lora", "spider") else []
    results = run(
        compose(
            "hardware=gpu",
            "hardware.precision=bf16-true",
            f"strategy={strategy}",
            "scope=connector_llm",
            "trainer.max_steps=3",
            *export,
        )
    )
    assert results["global_steps"] == 3 and set(results["scores"]["final"]) == {"digits", "shapes"}


GPU_ENGINES = ["deepspeed_zero2", "deepspeed_zero3", "fsdp2"]
GPU_STRATEGIES = {
    "spider": ["strategy=spider"],
    "lora": ["strategy=lora", "scope=connector_llm"],
    "commit": ["strategy=commit", "scope=connector_llm", "strategy.every_k=2"],
    "magnitude_mask": ["strategy=magnitude_mask"],
    "full": ["strategy=full"],
}


def test_strategies_under_sharded_engines_in_bf16(tmp_path):
    """spider, lora, commit and magnitude_mask under ZeRO-2, ZeRO-3 and FSDP2 on CUDA, bf16-mixed, on 2
    GPUs when there are 2 (else 1): per-rank peak memory and step time ÷ full's, printed side by side."""
    from tests.helpers.engines import launch

    world = min(2, torch.cuda.device_count())
    lines = []
    for engine in GPU_ENGINES:
        hardware = [
            f"hardware={engine}",
            f"hardware.devices={world}",
            "hardware.precision=bf16-mixed",
            "trainer.max_steps=6",
        ]
        results = launch(tmp_path / engine, hardware, GPU_STRATEGIES, world=world)
        full = max(r["step_s"] for r in results["full"][1])
        for strategy, (_, ranks) in results.items():
            assert all(r["steps"] == 6 for r in ranks), (engine, strategy)
            peak = max(r["peak_memory"] for r in ranks) / 2**20
            step = max(r["step_s"] for r in ranks) / full
            state = max(r["state_bytes"] for r in ranks) / ranks[0]["numel"]
            lines.append(f"{engine:16s} {strategy:15s} {peak:10.1f} MB {step:8.2f}x full {state:8.2f} B/param")
        if world == 2:  # SPIDER's 8 bytes per parameter, shared by the ranks
            assert max(r["state_bytes"] / r["numel"] for r in results["spider"][1]) <= 4 * 1.01
    print(f"\n{world} GPU(s), bf16-mixed, per rank: peak memory, step time ÷ full, strategy state")
    print("\n".join(lines))


@pytest.mark.parametrize(
    "switch",
    [
        ["model.gradient_checkpointing=true"],
        ["module.logits=all"],
        ["module.packing=true"],
        ["hardware.precision=bf16-true"],  # no mixed-precision plugin: the default AdamW is the fused one
    ],
)
def test_memory_switches_train_on_gpu(compose, switch):
    results = run(compose("hardware=gpu", "hardware.precision=bf16-mixed", "trainer.max_steps=3", *switch))
    assert results["global_steps"] == 3 and set(results["scores"]["final"]) == {"digits", "shapes"}


@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_packed_samples_keep_their_logits_on_gpu(compose, attention):
    """SDPA with transformers' block-diagonal mask, and flash attention's variable-length kernel (where the
    flash-attn package is installed), give each packed sample the logits it has in the padded batch."""
    from mllmft import api
    from mllmft.answer_logits import answer_tokens
    from mllmft.backbones import FAMILIES
    from mllmft.packing import pack

    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn")
    parts = api.build(
        compose("hardware=gpu", "model.dtype=bfloat16", f"model.attn_implementation={attention}", "data.batch_size=6")
    )
    parts.datamodule.setup("fit")
    batch = next(iter(parts.datamodule.train_dataloader()))
    net = parts.backbone.model.cuda().eval()
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch["model_inputs"].items()}
    labels = batch["labels"].cuda()
    with torch.no_grad():
        padded = answer_tokens(net, inputs, labels)
        packed_inputs, packed_labels = pack(inputs, labels, 10**6, FAMILIES["llava"].packing_positions, net)
        packed = answer_tokens(net, packed_inputs, packed_labels)
    assert torch.equal(packed.targets, padded.targets)
    torch.testing.assert_close(packed.logits, padded.logits, rtol=0, atol=0.1)  # bf16 round-off
