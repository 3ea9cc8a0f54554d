"""SPIDER and the selective / regularisation strategies: tests that catch a wrong implementation."""

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from mllmft import api
from mllmft.engines import Engine
from mllmft.strategies import SPIDER, AnchorPenalty, MagnitudeMask, RandomMask
from mllmft.strategies.core import StepContext, tensor_stats
from mllmft.strategies.selective.gradient_masks import keep_count, top_fraction_mask
from mllmft.strategies.selective.spider import normalized_importance, spider_mask


def _started(strategy, model):
    """The strategy as the runner starts it on one device: captured, placed on its fragments."""
    strategy.capture(Engine().full_weights(model, trainable_only=True))
    ctx = StepContext(Engine(), Engine().fragments(model))
    strategy.start(ctx)
    return ctx


# --- the formulas, against an independent numpy transcription of the spec -----------------------
def _n(x):
    a = np.abs(x)
    if not a.any():
        return np.zeros_like(a)
    return 1 / (1 + np.exp(-(a - a.mean()) / (a.std(ddof=1) + 1e-12)))


def _m(theta0, acc):
    i, g = _n(theta0), _n(acc)
    r = np.where(g > i, g / (i + g), 0.0)
    return np.minimum(r / r[r > 0].mean(), 1.0) if (r > 0).any() else np.zeros_like(r)


def test_hand_computed_two_steps_match_the_spec():
    theta0 = np.array([0.5, -1.0, 2.0, 0.1, -0.05, 0.3])
    grads = [np.array([0.9, -0.1, 0.2, -0.8, 0.05, 0.0]), np.array([0.7, 0.1, -0.3, -0.9, 0.02, 0.4])]
    lr = 0.1
    w, acc = theta0.copy(), np.zeros_like(theta0)
    p = torch.tensor(theta0, dtype=torch.float64)
    t0 = p.clone()
    acc_t = torch.zeros_like(p)
    for g in grads:
        acc += g  # 1. A += g
        w_tilde = w - lr * g  # 2. the optimizer step (plain SGD here)
        w = theta0 + _m(theta0, acc) * (w_tilde - theta0)  # 3-5. mask and weight allocation
        acc_t += torch.tensor(g)
        p = torch.lerp(t0, p - lr * torch.tensor(g), spider_mask(t0, acc_t).to(p.dtype))
    np.testing.assert_allclose(p.numpy(), w, rtol=0, atol=1e-6)  # importances are computed in fp32
    assert (p.numpy() == theta0).any() and (p.numpy() != theta0).any()  # some held, some moved


def test_normalized_importance_edge_cases():
    assert torch.equal(normalized_importance(torch.zeros(5)), torch.zeros(5))
    assert torch.allclose(normalized_importance(torch.full((4,), 3.0)), torch.full((4,), 0.5))
    assert normalized_importance(torch.tensor([2.0])).item() == 0.5
    assert spider_mask(torch.randn(10), torch.zeros(10)).sum() == 0  # no gradient yet: all held


def test_gaussian_weights_and_gradients_give_about_half_movable():
    torch.manual_seed(0)
    m = spider_mask(torch.randn(20_000), torch.randn(20_000))
    moving = m > 0
    assert 0.45 < moving.float().mean() < 0.55
    assert (m[moving] >= 0.8).float().mean() > 0.9 and m.max() == 1.0
    assert torch.equal(spider_mask(torch.randn(100), torch.randn(100), "binary").unique(), torch.tensor([0.0, 1.0]))


# --- masks hold exactly what they say ------------------------------------------------------------
@pytest.mark.parametrize("cls", [MagnitudeMask, RandomMask])
def test_fixed_masks_hold_exactly_the_configured_share(tiny_backbone, cls):
    strategy = cls(freeze_ratio=0.3)
    _started(strategy, tiny_backbone.model)
    for name, movable in strategy.movable.items():
        assert (~movable).sum().item() == round(0.3 * movable.numel()), name
        if cls is MagnitudeMask and movable.any() and (~movable).any():
            magnitude = strategy.theta0[name].abs()
            assert magnitude[~movable].min() >= magnitude[movable].max()


def test_gmt_keeps_exactly_k_entries_even_with_ties():
    g = torch.zeros(50)
    g[:3] = torch.tensor([5.0, -4.0, 3.0])
    mask = top_fraction_mask(g.abs(), 0.2)  # 10 kept: 3 real + 7 of the tied zeros
    assert mask.sum() == 10 and mask[:3].all()


@pytest.mark.parametrize("values", ["continuous", "few_levels", "all_equal"])
@pytest.mark.parametrize("share", [1e-6, 0.2, 0.999])
def test_large_tensor_top_k_equals_sorting(values, share):
    """Above 16 × BRACKET_SAMPLE entries the k-th value is bracketed from a sample first; the mask
    must still be the exact top k (ties: the earliest), however many ties the bracket holds."""
    generator = torch.Generator().manual_seed(0)
    n = 16 * tensor_stats.BRACKET_SAMPLE + 12345
    scores = {
        "continuous": torch.rand(n, generator=generator),
        "few_levels": torch.randint(0, 5, (n,), generator=generator).float(),
        "all_equal": torch.ones(n),
    }[values]
    k = keep_count(share, n)
    mask = tensor_stats.top_k_masks(Engine(), [scores], [k])[0]
    order = torch.argsort(-scores, stable=True)  # descending; equal scores keep their index order
    expected = torch.zeros(n, dtype=torch.bool)
    expected[order[:k]] = True
    assert torch.equal(mask, expected)


def test_float64_sums_equal_a_float64_copys():
    v = torch.randn(3 * tensor_stats.CPU_CHUNK + 7, generator=torch.Generator().manual_seed(0))
    sums = tensor_stats.float64_sums(v)
    d = v.double()
    torch.testing.assert_close(sums, torch.stack([d.sum(), d.square().sum()]), rtol=1e-12, atol=0)
    assert tensor_stats.float64_sums(v > 0, squares=False) == (v > 0).sum()


# --- regularisers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "norm, reduction", [("l2", "tensor_mean"), ("l1", "tensor_mean"), ("l2", "sum"), ("l1", "sum")]
)
def test_anchor_penalty_gradient_is_autograds_of_the_penalty(norm, reduction):
    """The gradient added before the step equals autograd's gradient of the written-out penalty."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = AnchorPenalty(norm, lam=0.1, reduction=reduction)
    ctx = _started(strategy, model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
            p.grad = torch.zeros_like(p)
    ctx.logging = True
    strategy.before_step(ctx)
    terms = [((p - theta0[n]).abs() if norm == "l1" else (p - theta0[n]).square()) for n, p in model.named_parameters()]
    if reduction == "tensor_mean":
        penalty = 0.1 * torch.stack([t.mean() for t in terms]).mean()
    else:
        penalty = 0.1 * torch.stack([t.sum() for t in terms]).sum() * (0.5 if norm == "l2" else 1.0)
    expected = torch.autograd.grad(penalty, list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), expected):
        assert torch.allclose(p.grad, g, atol=1e-7), name
    assert ctx.metrics["strategy/penalty"] == pytest.approx(penalty.item(), rel=1e-6)


# --- full runs on the tiny LLaVA ------------------------------------------------------------------
class AlwaysOneSPIDER(SPIDER):
    """SPIDER with M ≡ 1: must be plain fine-tuning, bit for bit."""

    def masks(self, engine, theta0, accumulated, numels, theta0_coefficients=None):
        return [torch.ones_like(a) for a in accumulated]


def _fit(compose, *overrides):
    parts = api.build(compose(*overrides))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    return parts


def test_spider_with_mask_one_is_plain_fine_tuning(compose):
    full = _fit(compose, "strategy=full", "trainer.max_steps=3")
    ones = _fit(compose, "strategy=spider", f"strategy._target_={__name__}.AlwaysOneSPIDER", "trainer.max_steps=3")
    a, b = full.backbone.model.state_dict(), ones.backbone.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["spider", "magnitude_mask", "random_mask"])
def test_held_entries_stay_exactly_at_theta0(compose, strategy):
    parts = _fit(compose, f"strategy={strategy}", "trainer.max_steps=4")
    s, model = parts.strategy, parts.backbone.model
    moved = 0
    for name, p in model.named_parameters():
        if name not in s.theta0:
            continue
        theta0, p = s.theta0[name], p.detach().reshape(-1)
        if strategy == "spider":
            held = spider_mask(theta0, s.accumulated[name]) == 0
        else:
            held = ~s.movable[name]
        assert torch.equal(p[held], theta0[held]), name
        moved += int((p[~held] != theta0[~held]).sum())
    assert moved > 0


def test_gmt_and_spu_log_mask_density(compose):
    gmt = _fit(compose, "strategy=gmt", "trainer.max_steps=1", "trainer.log_every_n_steps=1")
    assert gmt.trainer.callback_metrics["mask/density/llm"] == pytest.approx(0.2, abs=0.01)
    spu = _fit(compose, "strategy=spu", "trainer.max_steps=4", "strategy.score_fraction=0.5")
    assert spu.strategy.window_steps == 2
    for name, mask in spu.strategy.masks.items():
        assert mask.sum() == max(1, round(0.1 * mask.numel())), name


def test_spider_logs_diagnostics_and_draws_the_heatmap(compose, tmp_path):
    parts = _fit(compose, "strategy=spider", "trainer.max_steps=3", "trainer.log_every_n_steps=1")
    metrics = parts.trainer.callback_metrics
    for key in ("mask/density/llm", "mask/mean/llm", "mask/density/llm.layer3", "mask/density/connector"):
        assert 0.0 <= float(metrics[key]) <= 1.0, key
    # fp32: θ0 + signed sum, and two scalars per tensor (N(θ0)'s centre and scale)
    assert float(metrics["strategy/state_bytes_per_param"]) == pytest.approx(8.0, rel=2e-3)
    assert (tmp_path / "run" / "spider_mask_density.png").is_file()


def test_spider_in_bf16_ends_within_a_stated_tolerance_of_fp32(compose):
    """‖w_bf16 − w_fp32‖ / ‖w_fp32 − θ0‖ after 5 steps: measured 0.043 (bf16-mixed), 0.11 (bf16-true)."""
    from tests.helpers.engines import relative_deviation

    runs = {
        p: _fit(compose, "strategy=spider", "trainer.max_steps=5", f"hardware.precision={p}")
        for p in ("32", "bf16-mixed", "bf16-true")
    }
    theta0 = {n: p.detach() for n, p in api.build(compose()).backbone.model.named_parameters() if p.requires_grad}
    weights = {
        p: {n: t.detach() for n, t in r.backbone.model.named_parameters() if n in theta0} for p, r in runs.items()
    }
    assert relative_deviation(weights["bf16-mixed"], weights["32"], theta0) <= 0.10
    assert relative_deviation(weights["bf16-true"], weights["32"], theta0) <= 0.25
    assert {t.dtype for t in runs["bf16-true"].strategy.theta0.parts.values()} == {torch.bfloat16}
    assert {t.dtype for t in runs["bf16-true"].strategy.accumulated.values()} == {torch.float32}


def test_spider_state_is_six_bytes_per_parameter_in_bf16(compose):
    parts = _fit(
        compose, "strategy=spider", "hardware.precision=bf16-true", "trainer.max_steps=1", "trainer.log_every_n_steps=1"
    )
    # θ0 in bf16 + Σ g in fp32, and two fp32 scalars per tensor (N(θ0)'s centre and scale)
    assert float(parts.trainer.callback_metrics["strategy/state_bytes_per_param"]) == pytest.approx(6.0, rel=2e-3)


def test_hft_freezes_the_documented_share(tiny_backbone):
    from mllmft.scope import apply_scope
    from mllmft.strategies import HFT

    apply_scope(tiny_backbone, {"llm": {"train": True}})
    hft = HFT(seed=1)
    hft.attach(tiny_backbone)
    per_layer = {}
    for path in hft.frozen:
        layer = int(path.split("layers.")[1].split(".")[0])
        per_layer.setdefault(layer, []).append(path.rsplit(".", 1)[-1])
    mlp_counts = []
    for modules in per_layer.values():
        assert sum(m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) for m in modules) == 2
        assert sum(m.endswith("layernorm") for m in modules) == 1
        mlp_counts.append(sum(m.endswith(("gate_proj", "up_proj", "down_proj")) for m in modules))
    assert sorted(mlp_counts) == [1, 1, 2, 2]
    frozen_param = f"{hft.frozen[0]}.weight"
    assert not dict(tiny_backbone.model.named_parameters())[frozen_param].requires_grad
    assert tiny_backbone.model.model.language_model.embed_tokens.weight.requires_grad


def test_ewc_fisher_is_the_mean_squared_upstream_gradient(compose):
    overrides = (
        "strategy=ewc",
        "strategy.fisher_batches=2",
        "strategy.fisher_batch_size=3",
        "+data.upstream.shapes.sizes.train=12",
        "trainer.max_steps=1",
    )
    parts = _fit(compose, *overrides)
    fisher = parts.strategy.fisher
    fresh = api.build(compose(*overrides))  # same seed: the same θ0 and the same upstream batches
    model, dm = fresh.backbone.model, fresh.datamodule
    model.eval()
    expected = {}
    for i, batch in enumerate(dm.upstream_train_dataloader("train", 3)):
        if i == 2:
            break
        model.zero_grad()
        model(**batch["model_inputs"], labels=batch["labels"]).loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                expected[n] = expected.get(n, 0) + p.grad.square() / 2
    assert set(expected) <= set(fisher)
    for n, value in expected.items():
        assert torch.allclose(fisher[n], value.reshape(-1), rtol=1e-4, atol=1e-10), n


class _SaveWeights(L.Callback):
    def __init__(self, directory):
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        torch.save(pl_module.model.state_dict(), self.directory / f"rank{trainer.global_rank}.pt")


def test_ddp_ranks_hold_identical_spider_weights(compose, tmp_path):
    cfg = compose("strategy=spider", "hardware=ddp_cpu", "hardware.lightning_strategy=ddp_fork", "trainer.max_steps=3")
    parts = api.build(cfg)
    parts.trainer.callbacks.append(_SaveWeights(tmp_path))
    theta0 = {k: v.clone() for k, v in parts.backbone.model.state_dict().items()}
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], theta0[k]) for k in a)  # they trained


def _held_bytes(obj, seen=None) -> int:
    """Bytes of every tensor reachable from a strategy's attributes (each storage once, whole): what it
    really keeps alive, model parameters aside."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor) and not isinstance(obj, nn.Parameter):
        storage = obj.untyped_storage()
        seen[(storage.device, storage.data_ptr())] = storage.nbytes()
    elif isinstance(obj, dict):
        for value in obj.values():
            _held_bytes(value, seen)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _held_bytes(value, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        _held_bytes(vars(obj), seen)
    return sum(seen.values())


def _first_half_fragments(model):
    """Rank 0's fragments of a model sharded over 2 ranks: the first half of each tensor's elements."""
    from mllmft.engines import Fragment

    out = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            size = p.numel() // 2
            out.append(Fragment(name, p, p.shape, 0, size, lambda p=p, n=size: p.data.view(-1)[:n], lambda: None))
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=spider"],
        ["strategy=magnitude_mask"],
        ["strategy=model_dowser", "scope=llm_last_n", "scope.llm.last_n_layers=2", "strategy.sequences=4"]
        + ["strategy.length=8", "strategy.passes=1"],
    ],
    ids=lambda o: o[0],
)
def test_reported_state_is_every_tensor_the_strategy_holds_on_a_shard(compose, overrides):
    """strategy/state_bytes_per_param is what the rank keeps alive: Model-Dowser once reported its parts
    (0.41 B/param per rank) while holding every whole mask too (1.22 B/param)."""
    parts = api.build(compose(*overrides))
    strategy, model = parts.strategy, parts.backbone.model
    strategy.capture(Engine().full_weights(model, trainable_only=True))
    fragments = _first_half_fragments(model)
    strategy.start(StepContext(Engine(), fragments))
    numel = sum(f.numel for f in fragments)
    assert strategy.state_nbytes() == _held_bytes(strategy), strategy.name
    whole = {"spider": 8, "magnitude_mask": 5, "model_dowser": 1}[strategy.name]  # bytes per parameter, unsharded
    assert strategy.state_nbytes() / numel <= whole / 2 * 1.01
