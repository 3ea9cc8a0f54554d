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
    results = run(compose("hardware=gpu", "hardware.precision=bf16-true", f"strategy={strategy}",
                          "scope=connector_llm", "trainer.max_steps=3", *export))
    assert results["global_steps"] == 3 and set(results["scores"]["final"]) == {"digits", "shapes"}
