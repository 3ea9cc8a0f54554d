"""CoMMIT: the balance coefficient, the coordinated learning rates, the auxiliary term, resume."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mllmft import api
from mllmft.answer_logits import AnswerTokens
from mllmft.errors import ConfigError
from mllmft.strategies.commit.balance import BalanceMonitor, answer_kl, balance_coefficient
from mllmft.strategies.commit.learning_rates import CoordinateDescentRule, KappaRule, SideLearningRates
from mllmft.strategies.core.contract import TuningStrategy
from mllmft.strategies.core.runner import StrategyRunner
from tests.helpers.runs import CKPT, StopAt

COMMIT_STRATEGIES = ["commit", "commit_clr", "constant", "feature_cd", "language_cd", "commit_lora"]


class _Toy(torch.nn.Module):
    """logits = (enc + llm) · fixed logits: both sides' gradients are equal by construction."""

    def __init__(self, batch=4, length=6, vocab=11):
        super().__init__()
        self.enc = torch.nn.Parameter(torch.ones(()))
        self.llm = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("base", torch.randn(batch, length, vocab, generator=torch.Generator().manual_seed(0)))
        self.calls = {"train": 0, "eval": 0}
        self.head = torch.nn.Identity()  # the "LM head" the answer positions are picked before

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, labels=None):
        self.calls["train" if self.training else "eval"] += 1
        logits = self.head((self.enc + self.llm) * self.base)
        loss = None if labels is None else F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return SimpleNamespace(logits=logits, loss=loss)


class _ToyModule(L.LightningModule):
    def __init__(self, lrs):
        super().__init__()
        self.model, self.lrs = _Toy(), lrs

    def training_step(self, batch, batch_idx):
        return self.model(**batch["model_inputs"], labels=batch["labels"]).loss

    def configure_optimizers(self):
        return torch.optim.SGD(
            [
                {"params": [self.model.enc], "lr": self.lrs[0], "name": "connector"},
                {"params": [self.model.llm], "lr": self.lrs[1], "name": "llm"},
            ]
        )


def _toy_batches(n):
    labels = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(1))
    labels[:, :2] = -100  # the prompt
    batch = {"model_inputs": {"input_ids": labels.clamp(min=0)}, "labels": labels, "ids": list("abcd")}
    return [batch] * n


class _Measure(TuningStrategy):
    """Only the balance measurement (and side learning rates), run by the StrategyRunner as CoMMIT runs them."""

    name = "measure"

    def __init__(self, monitor, side_lr=None):
        self.monitor, self.side_lr = monitor, side_lr

    def start(self, ctx):
        if self.side_lr:
            self.side_lr.start(ctx)

    def before_batch(self, ctx, batch):
        self.monitor.before_batch(ctx, batch)

    def before_step(self, ctx):
        if self.side_lr:
            self.side_lr.before_step(ctx)

    def after_batch(self, ctx, batch):
        self.monitor.after_batch(ctx, batch)


def _fit_toy(lrs, steps, every_k=1, side_lr=None):
    import tempfile

    module = _ToyModule(lrs)
    monitor = BalanceMonitor(every_k=every_k, ema=0.0)
    monitor.sides = {"enc": "encoder", "llm": "llm"}
    runner = StrategyRunner(_Measure(monitor, side_lr), components=None)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[runner],
        default_root_dir=tempfile.mkdtemp(prefix="mllmft-toy-"),
    )  # its κ plot, not in the cwd
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_toy_batches(steps), batch_size=None))
    return monitor, module


def test_kappa_is_one_half_for_a_symmetric_construction():
    monitor, _ = _fit_toy((0.1, 0.1), steps=3)
    assert [h["kappa_raw"] for h in monitor.history] == [0.5, 0.5, 0.5]
    assert all(h["kl_encoder"] > 0 for h in monitor.history)


@pytest.mark.parametrize("lrs, kappa", [((0.1, 0.0), 1.0), ((0.0, 0.1), 0.0)])
def test_kappa_goes_to_the_side_that_moves(lrs, kappa):
    monitor, _ = _fit_toy(lrs, steps=2)
    assert [h["kappa_raw"] for h in monitor.history] == [kappa, kappa]
    assert balance_coefficient(0.0, 0.0) == 0.5


def test_extra_forward_passes_happen_only_every_k_steps():
    monitor, module = _fit_toy((0.1, 0.1), steps=7, every_k=3)  # measured at steps 0, 3, 6
    assert [h["step"] for h in monitor.history] == [0, 3, 6]
    assert monitor.extra_forwards == module.model.calls["eval"] == 9  # 3 per measurement
    assert module.model.calls["train"] == 7


def test_kappa_rule_raises_the_lagging_side_within_bounds():
    monitor = SimpleNamespace(kappa=0.5)
    rule = KappaRule(monitor, low=0.5, high=2.0)
    assert rule(0) == {"encoder": 1.0, "llm": 1.0}
    monitor.kappa = 0.2  # the encoder moved the distribution less: it gets the larger step
    assert rule(0) == pytest.approx({"encoder": 1.6, "llm": 0.5})  # 2κ = 0.4 clipped to 0.5
    monitor.kappa = 1.0
    assert rule(0) == {"encoder": 0.5, "llm": 2.0}
    with pytest.raises(ConfigError):
        KappaRule(monitor, low=1.5, high=2.0)


def test_side_learning_rates_scale_the_step():
    rule = KappaRule(SimpleNamespace(kappa=0.25), low=0.1, high=10.0)  # encoder × 1.5, llm × 0.5
    side_lr = SideLearningRates(rule, lambda name: "encoder" if name == "connector" else "llm")
    _, module = _fit_toy((0.1, 0.1), steps=1, side_lr=side_lr)
    assert side_lr.last == pytest.approx({"connector": 0.15, "llm": 0.05})
    moved_enc, moved_llm = 1 - module.model.enc.item(), 1 - module.model.llm.item()  # equal gradients, SGD
    assert moved_enc / moved_llm == pytest.approx(3.0)


def test_side_learning_rates_leave_the_schedule_alone(compose):
    """The schedule's lrs are the base of every step's multipliers, and never see them."""
    plain = api.build(compose("strategy=constant", "scope=connector_llm", "trainer.max_steps=4"))
    scaled = api.build(compose("strategy=feature_cd", "scope=connector_llm", "trainer.max_steps=4"))
    for parts in (plain, scaled):
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    schedules = [p.trainer.lr_scheduler_configs[0].scheduler.get_last_lr() for p in (plain, scaled)]
    assert schedules[0] == schedules[1]


def test_coordinate_descent_alternates_sides():
    rule = CoordinateDescentRule("encoder", period=4, share=0.75)
    assert [rule(s)["encoder"] for s in range(8)] == [1, 1, 1, 0, 1, 1, 1, 0]
    assert all(rule(s)["encoder"] + rule(s)["llm"] == 1 for s in range(8))


def test_auxiliary_term_pushes_away_from_the_previous_distribution():
    labels = torch.tensor([[-100, 3, 1, 2]])
    reference = AnswerTokens.of(torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(2)), labels).log_probs()
    logits = (reference.new_zeros(1, 4, 5) + 0.01).requires_grad_()
    kl = lambda z: answer_kl(AnswerTokens.of(z, labels).log_probs(), reference)  # noqa: E731
    (-0.1 * kl(logits)).backward()
    with torch.no_grad():
        assert kl(logits - 1.0 * logits.grad) > kl(logits)  # a descent step on the loss raises the KL


@pytest.mark.parametrize("strategy", COMMIT_STRATEGIES)
def test_every_commit_strategy_trains_and_logs_kappa(compose, tmp_path, strategy):
    cfg = compose(
        f"strategy={strategy}", "scope=connector_llm", "strategy.every_k=2", "trainer.max_steps=4", "logger=csv"
    )
    results = api.run(cfg)
    assert results["run"]["strategy"] == strategy and results["global_steps"] == 4
    assert (tmp_path / "run" / "commit_kappa.png").is_file()
    metrics = next((tmp_path / "run").rglob("metrics.csv")).read_text().splitlines()[0]
    for column in ("commit/kappa", "commit/kl_encoder", "commit/kl_llm"):
        assert column in metrics
    assert ("commit/lr/connector" in metrics) == (strategy != "constant")


def test_commit_needs_both_sides_trainable(compose):
    with pytest.raises(ConfigError, match="no encoder-side parameter trainable"):
        api.build(compose("strategy=commit", "scope=llm"))


def test_resume_restores_kappa_and_the_schedule(compose, tmp_path):
    common = [
        "trainer.max_steps=5",
        "data.target.sizes.train=8",
        "trainer.limit_val_batches=0",
        "strategy=commit",
        "scope=connector_llm",
        "strategy.every_k=1",
        "strategy.ema=0.5",
    ]
    whole = api.build(compose(*common))
    whole.trainer.fit(whole.module, datamodule=whole.datamodule)
    first = api.build(compose(*common, CKPT))
    first.trainer.callbacks.append(StopAt(3))
    first.trainer.fit(first.module, datamodule=first.datamodule)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = api.build(compose(*common, f"ckpt_path={ckpt}"))
    resumed.trainer.fit(resumed.module, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    assert resumed.strategy.monitor.history == whole.strategy.monitor.history
    assert resumed.strategy.monitor.kappa == whole.strategy.monitor.kappa
    a, b = whole.backbone.model.state_dict(), resumed.backbone.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _SaveKappa(L.Callback):
    def __init__(self, directory):
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {"history": pl_module.strategy.monitor.history, "weights": pl_module.model.state_dict()},
            self.directory / f"rank{trainer.global_rank}.pt",
        )


def test_ddp_ranks_agree_on_kappa_and_weights(compose, tmp_path):
    # each rank measures on its own batch; κ is averaged over ranks, so the lr (and weights) agree
    cfg = compose(
        "strategy=commit",
        "scope=connector_llm",
        "strategy.every_k=1",
        "hardware=ddp_cpu",
        "hardware.lightning_strategy=ddp_fork",
        "trainer.max_steps=3",
    )
    parts = api.build(cfg)
    parts.trainer.callbacks.append(_SaveKappa(tmp_path))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert len(a["history"]) == 3 and a["history"] == b["history"]
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_measuring_kappa_does_not_change_training(compose):
    # `constant` measures κ every step (eval-mode forwards, parameters swapped and put back) and must
    # train exactly like plain fine-tuning
    weights = {}
    for strategy in ("full", "constant"):
        parts = api.build(
            compose(
                f"strategy={strategy}",
                "scope=connector_llm",
                "strategy.every_k=1" if strategy == "constant" else "seed=42",
                "trainer.max_steps=3",
            )
        )
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        weights[strategy] = parts.backbone.model.state_dict()
    assert all(torch.equal(weights["full"][k], weights["constant"][k]) for k in weights["full"])
