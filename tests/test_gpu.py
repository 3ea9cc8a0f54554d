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
