"""The forgetting predictor: KL(π_base ‖ π_θ) on a fixed probe set, against a reference computed from
the whole vocabulary, zero for an unchanged model, and in a run's results."""

import json

import numpy as np
import pytest
import torch

from mllmft import api
from mllmft.answer_logits import AnswerTokens
from mllmft.kl_probe import KLProbe
from tests.helpers.runs import UPSTREAM


def _probe(parts) -> KLProbe:
    (probe,) = [c for c in parts.trainer.callbacks if isinstance(c, KLProbe)]
    return probe


def _perturb(model, scale=0.05):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def test_an_unchanged_model_measures_zero_and_the_cache_is_bounded(compose):
    parts = api.build(compose("probe.samples=5", "probe.top_k=8"))
    probe, model = _probe(parts), parts.backbone.model.eval()
    assert [p.name for p in probe.sets] == ["digits", *UPSTREAM]
    assert all(sum(len(b["labels"]) for b in p.batches) == 5 for p in probe.sets)
    assert all(t.shape[1] == 8 for p in probe.sets for t in p.top_indices)  # k numbers a token, whatever V
    assert probe.measure(model, torch.device("cpu")) == dict.fromkeys(("digits", *UPSTREAM), 0.0)


def test_the_kl_is_the_base_top_k_kl_computed_from_the_whole_vocabulary(compose):
    parts = api.build(compose("probe.samples=4", "probe.top_k=6"))
    probe, model = _probe(parts), parts.backbone.model.eval()
    batch = probe.sets[0].batches[0]

    def distribution():  # [answer tokens, V] probabilities, in numpy
        tokens = AnswerTokens.of(model(**batch["model_inputs"]).logits, batch["labels"])
        return torch.softmax(tokens.logits, -1).detach().numpy().astype(np.float64)

    base = distribution()
    _perturb(model)
    tuned = distribution()
    expected = []
    for b, t in zip(base, tuned):
        top = np.argsort(-b)[:6]
        pb, pt = b[top] / b[top].sum(), t[top] / t[top].sum()
        expected.append(np.sum(pb * (np.log(pb) - np.log(pt))))
    measured = probe.measure(model, torch.device("cpu"))["digits"]
    assert measured == pytest.approx(np.mean(expected), rel=1e-4) and measured > 0


def test_with_adapters_the_base_is_the_model_without_them(compose):
    parts = api.build(compose("strategy=lora", "strategy.init=gaussian", "probe.samples=3"))
    probe, model = _probe(parts), parts.backbone.model.eval()
    _perturb(model)  # the adapters (the only trainable weights) move
    assert all(kl > 0 for kl in probe.measure(model, torch.device("cpu")).values())
    with model.disable_adapter():
        assert probe.measure(model, torch.device("cpu")) == dict.fromkeys(("digits", *UPSTREAM), 0.0)


def test_a_run_logs_the_probe_at_each_evaluation_and_records_the_final_one(compose, tmp_path):
    from mllmft.run import run

    results = run(
        compose("probe.samples=4", "zeroshot_test=false", "trainer.max_steps=4", "trainer.val_check_interval=2")
    )
    assert set(results["probe_kl"]) == {"digits", *UPSTREAM} and all(v > 0 for v in results["probe_kl"].values())
    assert json.loads((tmp_path / "run" / "results.json").read_text())["probe_kl"] == results["probe_kl"]


def test_the_probe_can_be_switched_off_and_its_knobs_are_checked(compose):
    from hydra.errors import InstantiationException

    parts = api.build(compose("probe=null"))
    assert not [c for c in parts.trainer.callbacks if isinstance(c, KLProbe)]
    with pytest.raises(InstantiationException, match="probe.top_k=1; expected an integer >= 2"):
        api.build(compose("probe.top_k=1"))
