"""A scheduler's signal stops a run at an optimizer-step boundary with its checkpoint, one line and a non-zero
status; the resumed run ends equal to an uninterrupted one (mllmft/preemption.py)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllmft import api
from tests.helpers.runs import FAST, SMALL_LLAVA

ROOT = Path(__file__).resolve().parents[1]
RUN = [*FAST, *SMALL_LLAVA, "trainer.max_steps=4", "module.max_new_tokens=4"]


def _signal_at(batch: int | str, signum: int) -> str:
    return f"+callbacks.signal={{_target_: tests.helpers.plugins.SignalAt, batch: {batch}, signum: {signum}}}"


def test_a_real_sigterm_stops_the_process_with_its_checkpoint_and_the_resume_ends_equal(compose, tmp_path):
    env = {**os.environ, "MLLMFT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mllmft.train", *RUN, _signal_at(1, signal.SIGTERM), "hydra.run.dir=stopped"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    checkpoint = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"mllmft: stopped by SIGTERM after step 2; its checkpoint is {checkpoint}: "
        f"resume with the same command and ckpt_path={checkpoint}"
    )
    results = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert results["status"] == "interrupted" and results["global_steps"] == 2
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 2

    whole = api.build(compose(*RUN, run_dir="whole"))
    whole.trainer.fit(whole.module, datamodule=whole.datamodule)
    resumed = api.build(compose(*RUN, f"ckpt_path={checkpoint}", run_dir="resumed"))
    resumed.trainer.fit(resumed.module, datamodule=resumed.datamodule, ckpt_path=str(checkpoint))
    assert resumed.trainer.global_step == whole.trainer.global_step == 4
    a, b = whole.backbone.model.state_dict(), resumed.backbone.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigusr1_inside_an_accumulation_window_stops_at_the_windows_end(compose):
    from mllmft.errors import Preempted

    parts = api.build(compose(*RUN, "trainer.accumulate_grad_batches=2", _signal_at(2, signal.SIGUSR1)))
    handler = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted) as stop:  # batch 2 opens step 2's window (batches 2 and 3)
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert stop.value.step == 2 and stop.value.signum == signal.SIGUSR1 and stop.value.exit_status == 138
    assert torch.load(stop.value.checkpoint, map_location="cpu", weights_only=True)["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) == handler  # the process's own handler back


def test_a_signal_after_the_last_step_stops_before_the_final_test(compose):
    from mllmft.errors import Preempted

    # the only validation runs after the last step: the signal arrives there, with no step left to stop at
    parts = api.build(compose(*RUN, "trainer.val_check_interval=4", _signal_at("validation", signal.SIGTERM)))
    with pytest.raises(Preempted) as stop:
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert stop.value.step == 4 and stop.value.checkpoint.is_file()
