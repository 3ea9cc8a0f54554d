"""Post-hoc merges (mllmft-merge) and Model-Dowser, each against what its spec says it is."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mllmft import api
from mllmft.merges import DARE, TIES, TaskArithmetic, WiSEFT
from mllmft.merges.model_tailor import input_covariances, row_z, tailor_patch
from mllmft.run import run
from mllmft.strategies.selective.dowser_probe import probe_scores
from tests.helpers.runs import FAST, SMALL_LLAVA


def _pair(shape=(64, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(shape, generator=g)
    return theta0, theta0 + 0.1 * torch.randn(shape, generator=g)


# --- task-vector merges -----------------------------------------------------------------------
def test_wise_ft_endpoints_are_bit_exact_and_task_arithmetic_scales():
    theta0, theta_ft = _pair()
    assert torch.equal(WiSEFT(0.0).merge("w", theta0, theta_ft), theta0)
    assert torch.equal(WiSEFT(1.0).merge("w", theta0, theta_ft), theta_ft)
    torch.testing.assert_close(WiSEFT(0.25).merge("w", theta0, theta_ft), theta0 + 0.25 * (theta_ft - theta0))
    torch.testing.assert_close(TaskArithmetic(1.5).merge("w", theta0, theta_ft), theta0 + 1.5 * (theta_ft - theta0))


def test_lines_scales_each_blocks_update_by_its_depth(tiny_backbone):
    """LiNeS's rule written out from the authors' LiNeS_scaling: α + (1 − α)·ℓ/(L − 1) for block ℓ of each
    layer list, α outside the blocks (here: embeddings, norms, the projector, the head)."""
    import re

    from mllmft.merges import LiNeS

    method = LiNeS(alpha=0.2)
    method.prepare(tiny_backbone, None, None)
    lists = {path: len(tiny_backbone.model.get_submodule(path)) for path in tiny_backbone.components.layers.values()}
    for name, param in tiny_backbone.model.named_parameters():
        expected = 0.2
        for path, blocks in lists.items():
            if found := re.match(re.escape(path) + r"\.(\d+)\.", name):
                expected = 0.2 + 0.8 * int(found.group(1)) / (blocks - 1)
        theta0, theta_ft = _pair(tuple(param.shape) or (1,), seed=len(name))
        torch.testing.assert_close(method.merge(name, theta0, theta_ft), theta0 + expected * (theta_ft - theta0))
    # the last block of the LLM keeps its whole update, the first keeps α of it; the projector keeps α
    llm = tiny_backbone.components.layers["llm"]
    assert method.scales[f"{llm}.{lists[llm] - 1}.self_attn.q_proj.weight"] == 1.0
    assert method.scales[f"{llm}.0.self_attn.q_proj.weight"] == 0.2
    assert not [n for n in method.scales if tiny_backbone.components.component_of(n) == "connector"]


def test_dare_drops_p_and_is_unbiased_over_seeds():
    theta0, theta_ft = _pair((100, 100))
    delta, p, seeds = theta_ft - theta0, 0.7, 400
    total = torch.zeros_like(theta0)
    for seed in range(seeds):
        merged = DARE(drop=p, seed=seed).merge("w", theta0, theta_ft)
        kept = (merged - theta0) != 0
        # the drop rate: a binomial share of 10,000 entries, within 4 standard deviations
        assert abs(1 - kept.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / kept.numel())
        torch.testing.assert_close(merged[kept] - theta0[kept], delta[kept] / (1 - p))  # survivors rescaled
        total += merged
    # E[merged] = θ_ft: the mean over seeds is off by at most 5 standard errors, entry by entry
    stderr = delta.abs() * math.sqrt(p / (1 - p) / seeds)
    assert ((total / seeds - theta_ft).abs() <= 5 * stderr + 1e-6).all()
    again = DARE(drop=p, seed=3)
    assert torch.equal(again.merge("w", theta0, theta_ft), DARE(drop=p, seed=3).merge("w", theta0, theta_ft))
    assert not torch.equal(again.merge("w", theta0, theta_ft), again.merge("v", theta0, theta_ft))


def test_ties_on_one_task_vector_is_magnitude_trimming():
    theta0, theta_ft = _pair()
    delta = theta_ft - theta0
    k = round(0.2 * delta.numel())
    reference = torch.zeros_like(delta).view(-1)
    top = delta.abs().view(-1).topk(k).indices
    reference[top] = delta.view(-1)[top]
    torch.testing.assert_close(TIES(density=0.2).merge("w", theta0, theta_ft), theta0 + reference.view_as(delta))


# --- Model Tailor ---------------------------------------------------------------------------------
def _covariance(columns: int, samples: int = 400, seed: int = 1):
    """Correlated inputs, as a network's are (40 directions + noise): what compensation can use."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 40, generator=g) @ torch.randn(40, columns, generator=g)
    x += 0.1 * torch.randn(samples, columns, generator=g)
    x[:, 5] = 0  # an input that is always zero
    return x, x.T @ x / samples


def _tailor_reference(delta, covariance, patch, block=128, salience=0.8, damp=0.01):
    """Model Tailor from the spec, the slow way: column by column, OBS on the inverse of H restricted
    to the columns not yet processed (what SparseGPT's Cholesky rows compute at once), in float64."""
    w, h = delta.double().clone(), covariance.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    h.diagonal().add_(damp * h.diagonal().mean())
    columns = w.shape[1]
    keep = torch.zeros_like(w, dtype=torch.bool)
    for j in range(columns):
        inverse = torch.linalg.inv(h[j:, j:])
        if j % block == 0:  # the patch of this block, on δ as compensated so far
            end = min(j + block, columns)
            d2 = torch.stack([torch.linalg.inv(h[i:, i:])[0, 0] for i in range(j, end)])
            b = w[:, j:end]
            score = salience * row_z(b.abs()) + (1 - salience) * row_z(b.square() / d2)
            flat = score.reshape(-1)
            chosen = torch.zeros(flat.numel(), dtype=torch.bool)
            chosen[flat.topk(round(patch * flat.numel())).indices] = True
            keep[:, j:end] = chosen.view_as(score)
        dropped = torch.where(keep[:, j], 0.0, w[:, j])
        w[:, j:] -= (dropped / inverse[0, 0])[:, None] * inverse[0][None, :]
    return w, keep


@pytest.mark.parametrize("patch", [0.1, 0.5])
def test_model_tailor_equals_its_reference_and_keeps_the_share_per_block(patch):
    delta = 0.1 * torch.randn(24, 300, generator=torch.Generator().manual_seed(0))
    x, covariance = _covariance(300)
    patched, keep = tailor_patch(delta, covariance, patch=patch, block=128)
    reference, reference_keep = _tailor_reference(delta, covariance, patch)
    assert torch.equal(keep, reference_keep)
    torch.testing.assert_close(patched.double(), reference, rtol=0, atol=1e-5)
    for start in range(0, 300, 128):  # blocks of 128, 128 and 44 columns
        block = keep[:, start : start + 128]
        assert int(block.sum()) == round(patch * block.numel())
    assert torch.equal(patched[~keep], torch.zeros_like(patched[~keep]))  # exactly θ0 off the patch
    # the compensation lowers the output error against plain masking with the same patch
    compensated = ((patched - delta) @ x.T).square().sum()
    masked = ((delta * keep - delta) @ x.T).square().sum()
    assert compensated < (0.9 if patch == 0.1 else 0.3) * masked


def test_model_tailor_with_the_whole_patch_is_the_task_vector():
    delta = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    patched, keep = tailor_patch(delta, _covariance(40)[1], patch=1.0)
    assert keep.all() and torch.allclose(patched, delta)  # nothing dropped: nothing to compensate


def test_input_covariances_stop_after_the_block_and_match_the_inputs():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, input_ids):
            return self.second(torch.relu(self.first(input_ids)))

    toy = Toy()
    x = torch.randn(2, 5, 6)
    covariances = input_covariances(toy, toy.first, {"first": toy.first}, [{"model_inputs": {"input_ids": x}}])
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(covariances["first"], flat.T @ flat / 10)


# --- Model-Dowser's probe against a closed form -----------------------------------------------------
class _LinearToy(nn.Module):
    """logits = W2 · W1 · embed(ids): ∂logits/∂(W1's output) = W2, whatever the input."""

    def __init__(self, vocab=64, hidden=16):
        super().__init__()
        self.embed, self.proj = nn.Embedding(vocab, hidden), nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.head(self.proj(self.embed(input_ids))))


@pytest.mark.parametrize("psi, factor", [("rms", 1.0), ("abs", math.sqrt(2 / math.pi))])
def test_hutchinson_sensitivity_matches_the_jacobian_column_norm(psi, factor):
    """rms: E_ξ[(ξᵀ W2 e_i)²] = ‖W2 e_i‖² exactly; abs: the mean |ξᵀ W2 e_i| of a sum of 64 weighted
    signs, ≈ sqrt(2/π) ‖W2 e_i‖ (near-Gaussian). 512 rows × 8 passes: within 5 %."""
    torch.manual_seed(0)
    toy = _LinearToy()
    ids = torch.randint(0, 64, (512, 1))
    scores = probe_scores(
        toy, {"proj": toy.proj}, [ids], passes=8, psi=psi, generator=torch.Generator().manual_seed(0)
    )["proj"]
    batch = ids.shape[0]  # s = Σ ξ·logits / B: each row's sensitivity carries 1/B
    column_norm = toy.head.weight.detach().norm(dim=0)
    activation = toy.embed(ids).detach().abs().reshape(-1, 16).mean(0)
    expected = factor * column_norm[:, None] / batch * toy.proj.weight.detach().abs() * activation[None, :]
    torch.testing.assert_close(scores, expected, rtol=0.05, atol=0)


# --- Model-Dowser in a run -------------------------------------------------------------------------
DOWSER = [
    "strategy=model_dowser",
    "scope=llm_last_n",
    "scope.llm.last_n_layers=2",
    "strategy.ratio=0.25",
    "strategy.sequences=4",
    "strategy.length=8",
    "strategy.passes=2",
]


def test_model_dowser_trains_exactly_rho_and_frozen_entries_never_move(compose):
    parts = api.build(compose(*DOWSER, "trainer.max_steps=4"))
    strategy, model = parts.strategy, parts.backbone.model
    assert strategy.probed and strategy._whole_masks and strategy.summary()["probe_seconds"] > 0
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = dict(strategy._whole_masks)  # the strategy keeps each rank's part only once training starts
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.25 * mask.numel()), name
        weight = params[name].detach()
        assert torch.equal(weight[~mask], theta0[name][~mask]), name  # frozen: bit for bit θ0
        assert not torch.equal(weight[mask], theta0[name][mask]), name  # the trainable share moved
    assert all(torch.equal(params[n].detach(), theta0[n]) for n in params if n.startswith("lm_head"))
    # the scores were cached: a second run (another ratio) probes no more, and masks the same ranking
    again = api.build(compose(*DOWSER, "strategy.ratio=0.5")).strategy
    assert not again.probed
    for name, mask in masks.items():
        assert (mask <= again._whole_masks[name]).all()  # the 25 % lowest are inside the 50 % lowest


# --- every merge end to end, on two families --------------------------------------------------------
MERGES = {
    "wise_ft": [],
    "task_arithmetic": [],
    "dare": [],
    "ties": [],
    "lines": [],
    "model_tailor": ["merge.samples=8"],
    "grafting": ["merge.steps=4", "merge.round_every=2", "merge.samples=8", "merge.eval_samples=8"],
}
FAMILIES = {"llava": [], "qwen2_vl": ["model=qwen2_vl_tiny"]}


def test_every_merge_method_is_run_end_to_end():
    """CONTRIBUTING's checklist: a new conf/merge/<name>.yaml joins MERGES below."""
    from mllmft.config import CONF_DIR

    assert set(MERGES) == {p.stem for p in (CONF_DIR / "merge").glob("*.yaml")}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One short full fine-tuning run with an export per family (what mllmft-merge reads)."""

    runs = {}
    for family, model in FAMILIES.items():
        out = tmp_path_factory.mktemp(family)
        base = FAST + ([] if model else SMALL_LLAVA)
        cfg = api.compose(
            [
                *base,
                *model,
                f"paths.cache_dir={out / 'cache'}",
                "trainer.max_steps=3",
                "export=merged",
                "module.lr=1e-2",
            ],
            output_dir=out / "run",
        )
        run(cfg)
        runs[family] = out
    return runs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", MERGES)
def test_every_merge_runs_end_to_end(finetuned, family, method, monkeypatch):
    from mllmft.changes import Merge

    out = finetuned[family]
    base = FAST + ([] if FAMILIES[family] else SMALL_LLAVA)
    cfg = api.compose(
        [
            *base,
            *FAMILIES[family],
            f"paths.cache_dir={out / 'cache'}",
            f"merge={method}",
            *MERGES[method],
            f"finetuned={out / 'run'}",
            "zeroshot_test=true",
        ],
        config_name="merge",
        output_dir=out / method,
    )
    seen, check = [], Merge.check

    def checked(self, parts):
        seen.append((self, parts))
        check(self, parts)

    monkeypatch.setattr(Merge, "check", checked)
    results = run(cfg)
    merge = json.loads((out / method / "results.json").read_text())["run"]["merge"]
    assert merge["method"] == method and merge["tensors_changed"] > 0 and merge["seconds"] >= 0
    assert {"E", "F", "O"} <= set(results["tradeoff"]["final"])
    merger, backbone = seen[0][0].method, seen[0][1].backbone
    model = dict(backbone.model.named_parameters())
    theta0 = dict(
        api.build(
            api.compose([*base, *FAMILIES[family], f"paths.cache_dir={out / 'cache'}"])
        ).backbone.model.named_parameters()
    )
    changed = [n for n in model if not torch.equal(model[n], theta0[n])]
    assert changed
    if method == "model_tailor":  # the projector is reset; each LLM linear changes on its patch only
        assert not [n for n in changed if backbone.components.component_of(n) == "connector"]
        assert merger.keep_masks and set(merger.keep_masks) <= set(merger.written)
        for name, keep in merger.keep_masks.items():
            assert int(keep[:, :128].sum()) == round(0.1 * keep[:, :128].numel())
            assert torch.equal(model[name][~keep], theta0[name][~keep])
    if method == "grafting":  # each tensor: θ_ft on exactly the sparsity's share, θ0 elsewhere
        for name, mask in merger.masks.items():
            assert int(mask.sum()) == round(0.1 * mask.numel())
            assert torch.equal(model[name][~mask], theta0[name][~mask])


def test_a_finetuned_result_of_another_model_is_one_clear_error(finetuned):
    """θ_ft from a Qwen2-VL run merged into the tiny LLaVA: refused before any evaluation, naming it."""
    from mllmft.errors import ConfigError

    out = finetuned["llava"]
    cfg = api.compose(
        [*FAST, *SMALL_LLAVA, f"paths.cache_dir={out / 'cache'}", f"finetuned={finetuned['qwen2_vl'] / 'run'}"],
        config_name="merge",
        output_dir=out / "wrong",
    )
    with pytest.raises(ConfigError, match="holds a 'qwen2_vl' model, not a 'llava' one"):
        run(cfg)
    assert not (out / "wrong" / "results.json").exists()


# --- Model-Dowser's synthetic sequences as the authors' code writes them ----------------------------
class _EndsAfter(nn.Module):
    """A causal toy that writes ``step`` tokens per row (id 7) and then its end of sequence (id 2)."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.embed = step, nn.Embedding(16, 4)
        self.generation_config = SimpleNamespace(pad_token_id=0)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict]] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append((input_ids, attention_mask, kwargs))
        written = torch.full((input_ids.shape[0], self.step + 1), 7)
        written[:, -1] = 2  # every row ends: HF stops there
        return torch.cat([input_ids, written], dim=1)


def test_the_synthetic_sequences_are_what_the_model_wrote_after_per_row_random_starts():
    from mllmft.strategies.selective.dowser_probe import synthetic_sequences

    tokenizer = SimpleNamespace(bos_token_id=1, eos_token_id=2, vocab_size=16, all_special_ids=[0, 1, 2])
    toy = _EndsAfter(step=3)
    batches = synthetic_sequences(toy, tokenizer, count=8, length=64, batch_size=8, generator=torch.Generator())
    ids, attention, kwargs = toy.calls[0]
    starts = attention.sum(1)
    assert starts.min() >= 2 and starts.max() <= 6 and len(set(starts.tolist())) > 1  # BOS + 1-5, per row
    assert (ids[:, 0] == 1).all() and (ids[attention == 0] == 1).all()  # BOS first; BOS pads, masked
    assert not torch.isin(ids[:, 1:][attention[:, 1:] == 1], torch.tensor([0, 2])).any()  # no special id but BOS
    assert "min_new_tokens" not in kwargs and kwargs["max_new_tokens"] == 64 - ids.shape[1]
    assert kwargs["pad_token_id"] == 0  # the model's own padding after a row's end
    assert torch.equal(batches[0], torch.tensor([[7, 7, 7, 2]] * 8))  # the written tokens alone, start dropped
