"""One rank of a multi-process engine test, launched by tests.helpers.engines.launch as torchrun would be
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment, so Lightning does not
re-launch): trains every run of the spec in turn inside one process group, and writes the final
trainable weights (rank 0) and each rank's strategy state per trainable parameter.

    python tests/helpers/engine_worker.py spec.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root
import tests.helpers  # noqa: E402, F401  (first: the offline environment)

# isort: split
import lightning as L  # noqa: E402
import torch  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.engines import engine_for  # noqa: E402
from tests.helpers.runs import EQUAL_STEPS, FAST, FAST_DEFAULT_MODEL, SMALL_LLAVA, StopAt  # noqa: E402


class SaveFinalWeights(L.Callback):
    """At the end of training: the final weights (rank 0), and each rank's state bytes, median step
    time (after 2 warm-up steps) and peak CUDA memory."""

    def __init__(self, out: Path):
        self.out = out
        self.step_times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.step_times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module) -> None:
        engine = engine_for(trainer)
        weights = engine.full_weights(pl_module.model, trainable_only=True)  # collective: every rank
        numel = sum(f.numel for f in engine.fragments(pl_module.model))
        timed = self.step_times[2:] or self.step_times
        stats = {
            "state_bytes": pl_module.strategy.state_nbytes(),
            "numel": numel,
            "engine": engine.name,
            "steps": trainer.global_step,
            "step_s": statistics.median(timed) if timed else 0.0,
            "peak_memory": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
        }
        if hasattr(pl_module.strategy, "monitor"):  # CoMMIT: the balance measurements
            stats["kappa"] = pl_module.strategy.monitor.history
        (self.out.parent / f"{self.out.stem}.rank{trainer.global_rank}.json").write_text(json.dumps(stats))
        if trainer.is_global_zero:
            torch.save(weights, self.out)


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    for name, run in spec["runs"].items():
        # {"overrides": [...], "stop_at": N, "model": "default" (the shipped pre-trained tiny LLaVA)}
        run = run if isinstance(run, dict) else {"overrides": run}
        small = [*FAST, *SMALL_LLAVA] if run.get("model") != "default" else FAST_DEFAULT_MODEL
        cfg = api.compose(
            [
                *small,
                *EQUAL_STEPS,
                f"paths.cache_dir={out / 'cache'}",
                *spec["hardware"],
                *run["overrides"],
            ],
            output_dir=out / name,
        )
        parts = api.build(cfg)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        parts.trainer.callbacks.append(SaveFinalWeights(out / f"{name}.pt"))
        if "stop_at" in run:
            parts.trainer.callbacks.append(StopAt(run["stop_at"]))
        if cfg.zeroshot_test:  # as mllmft.run does before fitting
            parts.module.test_phase = "zeroshot"
            parts.trainer.test(parts.module, datamodule=parts.datamodule, verbose=False)
        parts.trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=cfg.get("ckpt_path"))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1])
