"""The real default main job, from an empty cache: pre-training included (~3-4 min on 2 cores)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_default_main_job_learns_shapes_then_digits(tmp_path):
    env = {**os.environ, "MLLMFT_CACHE": str(tmp_path / "cache"), "MLLMFT_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [Path(sys.executable).parent / "mllmft-train", "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # chance on shapes is ~21% (caption 1/54, colour 1/6, shape 1/3, count 1/3)
    assert results["pretrain"]["upstream_test_exact_match"] > 70
    zeroshot, final = results["scores"]["zeroshot"], results["scores"]["final"]
    assert zeroshot["shapes"] > 70 and zeroshot["digits"] < 5
    assert final["digits"] > 50  # learnt the target
    assert results["tradeoff"]["final"]["F"] < 0  # and, fully fine-tuned, forgot some shapes
