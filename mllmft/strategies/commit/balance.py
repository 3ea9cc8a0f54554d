"""CoMMIT's multimodal balance coefficient κ_t — a reconstruction (the paper's equations are not
available; see the README's CoMMIT section).

Every K steps, on that step's batch, in eval mode and without gradients:

* before the optimizer step: the answer-token distribution at the current parameters,
  P_prev = P(θx_{t−1}, θl_{t−1}), and a copy of the trainable parameters of both sides;
* after it: P_x = P(θx_t, θl_{t−1}) (the LLM side put back: the encoder's update alone) and
  P_l = P(θx_{t−1}, θl_t) (the encoder's update alone undone);
* D_x = KL(P_x ‖ P_prev), D_l = KL(P_l ‖ P_prev), averaged over answer tokens and ranks;
  κ_raw = D_x / (D_x + D_l) ∈ [0, 1] (½ = balanced), smoothed: κ ← β κ + (1 − β) κ_raw.

Three extra forward passes per measurement, none on other steps; the parameter copy exists only
between the two hooks of a measured step (unless the auxiliary term keeps it, see ``reference``).
Copies and swaps are of this rank's fragments (published to the engine), so they shard with the
model; the KL values, measured on each rank's batch, are averaged over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

from mllmft.answer_logits import answer_tokens
from mllmft.checks import check_number
from mllmft.errors import ConfigError

SIDES = ("encoder", "llm")


def answer_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of KL(P ‖ Q) = Σ_v P (log P − log Q)."""
    if log_p.shape[0] == 0:
        return log_p.new_zeros(())
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def balance_coefficient(d_encoder: float, d_llm: float, eps: float = 1e-12) -> float:
    """κ = D_x / (D_x + D_l); ½ when neither side changed anything."""
    total = d_encoder + d_llm
    return 0.5 if total <= eps else d_encoder / total


class BalanceMonitor:
    """Measures κ every ``every_k`` optimizer steps (the step index counted from 0: steps 0, K, 2K...),
    from the strategy's ``before_batch`` / ``after_batch`` hooks (the StrategyRunner's context).

    ``sides`` maps each trainable parameter name to ``encoder`` or ``llm`` (built by the strategy
    from the component map). ``keep_reference``: keep the measured step's pre-update parameters until
    the next measurement, for the auxiliary term's reference distribution.
    """

    def __init__(self, every_k: int = 10, ema: float = 0.9, keep_reference: bool = False):
        check_number("strategy.every_k", every_k, 1, integer=True)
        check_number("strategy.ema", ema, 0, 1, high_open=True)
        self.every_k, self.ema, self.keep_reference = every_k, ema, keep_reference
        self.sides: dict[str, str] = {}
        self.kappa = 0.5  # balanced until measured
        self.measurements = 0
        self.extra_forwards = 0
        self.history: list[dict[str, float]] = []
        self.reference: dict[str, torch.Tensor] | None = None  # θ at the last measurement (aux term)
        self.reference_log_probs: torch.Tensor | None = None  # P(reference) on this step's batch
        self._before: dict[str, torch.Tensor] | None = None
        self._log_p_prev: torch.Tensor | None = None

    def measuring(self, step: int) -> bool:
        return step % self.every_k == 0

    @staticmethod
    def check_accumulation(accumulate_grad_batches: int) -> None:
        if accumulate_grad_batches != 1:
            raise ConfigError(
                f"CoMMIT measures each optimizer step on its own batch: trainer.accumulate_grad_batches="
                f"{accumulate_grad_batches}; set it to 1 (raise data.batch_size instead)"
            )

    # --- the measurement --------------------------------------------------------------------------
    def before_batch(self, ctx, batch) -> None:
        self.reference_log_probs = None
        if not self.measuring(ctx.step):
            return
        if self.keep_reference and self.reference is not None:
            with self._swapped(ctx, self.reference, names=self.reference):
                self.reference_log_probs = self._log_probs(ctx.module, batch)
        self._before = {f.name: f.values().clone() for f in ctx.fragments if f.name in self.sides}
        self._log_p_prev = self._log_probs(ctx.module, batch)

    def after_batch(self, ctx, batch) -> None:
        """After the step ``ctx.step`` (the one just taken)."""
        if self._before is None:
            return
        before, previous = self._before, self._log_p_prev
        assert previous is not None, "the log-probabilities before the step are taken with the weights"
        with self._swapped(ctx, before, names=self._side("llm")):
            kl_encoder = answer_kl(self._log_probs(ctx.module, batch), previous)
        with self._swapped(ctx, before, names=self._side("encoder")):
            kl_llm = answer_kl(self._log_probs(ctx.module, batch), previous)
        d = ctx.mean_over_ranks(torch.stack([kl_encoder, kl_llm]).detach())
        d_encoder, d_llm = float(d[0]), float(d[1])
        raw = balance_coefficient(d_encoder, d_llm)
        self.kappa = raw if self.measurements == 0 else self.ema * self.kappa + (1 - self.ema) * raw
        self.measurements += 1
        record = {"step": ctx.step, "kappa": self.kappa, "kappa_raw": raw, "kl_encoder": d_encoder, "kl_llm": d_llm}
        self.history.append(record)
        ctx.log_now({f"commit/{k}": float(v) for k, v in record.items() if k != "step"}, ctx.step)
        self.reference = before if self.keep_reference else None
        self._before = self._log_p_prev = None

    def _side(self, side: str) -> list[str]:
        return [n for n, s in self.sides.items() if s == side]

    @torch.no_grad()
    def _log_probs(self, pl_module, batch) -> torch.Tensor:
        model, was_training = pl_module.model, pl_module.model.training
        model.eval()  # deterministic (no dropout): the distributions differ by the parameters only
        try:
            tokens = answer_tokens(model, batch["model_inputs"], batch["labels"])
        finally:
            model.train(was_training)
        self.extra_forwards += 1
        return tokens.log_probs()

    @staticmethod
    @contextmanager
    def _swapped(ctx, values: dict, names: Iterable[str]):
        """Temporarily give the fragments ``names`` the ``values``; the current ones come back afterwards."""
        names = set(names)
        fragments = [f for f in ctx.fragments if f.name in names]
        with torch.no_grad():
            saved = {f.name: f.values().clone() for f in fragments}
            for f in fragments:
                f.values().copy_(values[f.name])
            ctx.engine.publish(fragments)
        try:
            yield
        finally:
            with torch.no_grad():
                for f in fragments:
                    f.values().copy_(saved[f.name])
                ctx.engine.publish(fragments)

    # --- results ----------------------------------------------------------------------------------
    def finish(self, ctx) -> None:
        if ctx.is_global_zero and self.history:
            plot_kappa(self.history, ctx.out_dir / "commit_kappa.png")

    def state_dict(self) -> dict:
        return {
            "kappa": self.kappa,
            "measurements": self.measurements,
            "history": list(self.history),
            "reference": self.reference,
        }

    def load_state_dict(self, state: dict) -> None:
        self.kappa = state["kappa"]
        self.measurements = state["measurements"]
        self.history = list(state["history"])
        self.reference = state.get("reference")


def plot_kappa(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [h["kappa_raw"] for h in history], ".", alpha=0.4, label="κ raw")
    ax.plot(steps, [h["kappa"] for h in history], "-", label="κ (EMA)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("κ = D_enc / (D_enc + D_llm)")
    ax.legend(loc="best")
    ax.set_title("CoMMIT balance coefficient")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
