"""The benchmarks that a CPU machine cannot measure still run their code path here (bench/ is not a package)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


@pytest.mark.slow
def test_the_gpu_bench_runs_its_code_path_on_a_cpu(tmp_path):
    """bench/gpu.py with LLaVA-1.5-7B's layout scaled down, on the CPU: a row per strategy and scope."""
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "gpu.py"),
            *("--shape", "small", "--device", "cpu", "--steps", "2", "--warmup", "1", "--peak-tflops", "1"),
            *("--strategies", "full", "spider", "--scopes", "connector_llm_last2", "llm", "--switches", "packing"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("connector_llm_last2 ", "llm "))]
    assert [(r[0], r[1]) for r in rows] == [
        ("connector_llm_last2", "full"),
        ("connector_llm_last2", "spider"),
        ("connector_llm_last2", "full+packing"),
        ("llm", "full"),
        ("llm", "spider"),
        ("llm", "full+packing"),
    ]
    assert all(0 < float(r[5]) < 1 and float(r[6]) > 0 for r in rows)  # MFU over a 1 TFLOP/s "peak", step ÷ full
    assert rows[0][6] == rows[3][6] == "1.000"
