"""Runs end to end, in process: training steps, zero-shot, results, resume, data-parallel."""

import json

import lightning as L
import pytest
import torch

from mllmft import api
from mllmft.run import run
from tests.helpers.runs import ALL_TRAINING_STRATEGIES, CKPT, UPSTREAM, StopAt

SCOPES = ["all", "llm", "connector", "connector_llm_last2", "llm_last_n"]
TRAINING_STRATEGIES = ["full", "spider", "magnitude_mask", "random_mask", "gmt", "spu", "hft", "l1_sp", "l2_sp", "ewc"]
# Weight-allocation strategies may hold a whole tensor at θ0 after a step (e.g. a bias whose gradient
# does not yet outweigh its pre-trained magnitude): for them only "no frozen tensor moved" is exact.
MAY_HOLD_TENSORS = {"spider"}


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("strategy", TRAINING_STRATEGIES)
@pytest.mark.parametrize("scope", SCOPES)
def test_one_training_step_moves_exactly_the_trainable_parameters(compose, strategy, scope):
    parts = api.build(compose(f"strategy={strategy}", f"scope={scope}", "trainer.max_steps=1"))
    model = parts.backbone.model
    before = _snapshot(model)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert parts.trainer.global_step == 1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    moved = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert moved <= trainable, f"frozen parameters moved: {sorted(moved - trainable)[:5]}"
    if strategy in MAY_HOLD_TENSORS:
        assert moved
    else:
        assert moved == trainable, f"trainable parameters that did not move: {sorted(trainable - moved)[:5]}"


def test_the_optimizer_and_the_schedule_are_partial_configs(compose):
    """Any torch optimizer through overrides; it gets the per-component groups and their lrs."""
    parts = api.build(
        compose(
            "scope=connector_llm",
            "+scope.connector.lr_scale=10",
            "module.optimizer._target_=torch.optim.SGD",
            "~module.optimizer.betas",
            "+module.optimizer.momentum=0.9",
            "module.scheduler.warmup_ratio=0.5",
        )
    )
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    optimizer, schedule = parts.trainer.optimizers[0], parts.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(optimizer, torch.optim.SGD) and {g["momentum"] for g in optimizer.param_groups} == {0.9}
    base = {g["name"].split(".")[0]: lr for g, lr in zip(optimizer.param_groups, schedule.base_lrs)}
    assert base["connector"] == pytest.approx(10 * base["llm"]) and base["llm"] == pytest.approx(1e-3)
    # 2 steps, warm-up 1: step 0 at the full lr, then the half cosine reaches 0 at step 2
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_transformers_schedules_plug_in_as_the_scheduler(compose):
    """transformers' own cosine schedule through overrides (its warm-up starts at lr 0, the default's at
    lr / warm-up steps: the one difference between them)."""
    parts = api.build(
        compose(
            "module.scheduler._target_=transformers.get_cosine_schedule_with_warmup",
            "~module.scheduler.warmup_ratio",
            "~module.scheduler.min_lr_ratio",
            "+module.scheduler.num_warmup_steps=1",
        )
    )
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    factor = parts.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert [factor(step) for step in range(3)] == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)


def test_zeroshot_only_evaluates(compose):
    cfg = compose("strategy=zeroshot")
    results = run(cfg)
    assert results["global_steps"] == 0 and "zeroshot" not in results["scores"]
    assert set(results["scores"]["final"]) == {"digits", *UPSTREAM}
    assert all(c["trainable"] == 0 for c in results["trainable_parameters"].values())


def test_results_json_and_tradeoff_scores(compose, tmp_path):
    cfg = compose("zeroshot_test=true")
    results = run(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["schema"] == "mllmft.results/3"
    assert saved["metrics"] == {s: {"name": "exact_match"} for s in ("digits", *UPSTREAM)}
    assert saved["eval_samples_per_s"] > 0
    lines = (tmp_path / "run" / "predictions" / "final-digits.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 8 and set(first) == {"id", "prompt", "prediction", "references", "score"}
    assert (tmp_path / "run" / "predictions" / "zeroshot-shapes.jsonl").is_file()
    assert saved["target"] == "digits" and saved["upstream"] == list(UPSTREAM)
    final, zs = saved["tradeoff"]["final"], saved["tradeoff"]["zeroshot"]
    assert final["S_t"] == saved["scores"]["final"]["digits"]
    assert final["E"] == pytest.approx(final["S_t"] - zs["S_t"])
    assert final["O"] == pytest.approx(final["E"] + final["F"])
    assert saved["global_steps"] == 2
    assert saved["samples"] == {s: 8 for s in ("digits", *UPSTREAM)}  # limit_test_batches=1 x eval_batch_size=8
    assert saved["trainable_parameters"]["vision"]["trainable"] > 0


class _TrainModeProbe(L.Callback):
    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(pl_module.model.training)


PRETRAIN = (
    "model.pretrain={source: {_target_: mllmft.data.ShapesSource, sizes: {train: 8, test: 4}}, "
    "max_steps: 2, batch_size: 4, lr: 1.0e-3}"
)


def test_the_default_model_ships_pre_trained_for_its_config(tmp_path, monkeypatch):
    """The main job's first run loads the checkpoint in the package (same key as the default config:
    rebuild it with `python -m mllmft.pretrain` after changing model/_tiny.yaml or the pre-training)."""
    from mllmft import pretrain
    from mllmft.build import build_backbone, pretrain_stage

    def no_training(*args):
        raise AssertionError("pre-trained instead of loading the shipped checkpoint")

    monkeypatch.setattr(pretrain, "_train_and_save", no_training)
    cfg = api.compose([f"paths.cache_dir={tmp_path}"], output_dir=tmp_path / "run")
    shipped = pretrain_stage(cfg)
    assert shipped is not None and shipped.parent == pretrain.SHIPPED
    report = json.loads((shipped / "pretrain.json").read_text())
    assert report["upstream_test_exact_match"] >= 80 and report["format"] == pretrain.FORMAT
    assert build_backbone(cfg.model, shipped).info["pretrain"]["steps"] == cfg.model.pretrain.max_steps
    assert not (tmp_path / "pretrained").exists()


def test_pretrained_tiny_model_is_cached_and_fine_tuned_in_train_mode(compose, tmp_path):
    cfg = compose(PRETRAIN, "zeroshot_test=true")
    parts = api.build(cfg)
    assert parts.backbone.info["pretrain"]["steps"] == 2
    cached = list((tmp_path / "cache" / "pretrained").glob("llava-*/pretrain.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    probe = _TrainModeProbe()
    parts.trainer.callbacks.append(probe)
    parts.trainer.test(parts.module, datamodule=parts.datamodule, verbose=False)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert probe.modes == [True, True]  # from_pretrained and the zero-shot test leave eval mode
    api.build(compose(PRETRAIN))  # the same config again: loaded from the cache, not re-trained
    assert cached[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "strategy, stop_at", [("full", 2), ("full", 3), ("spider", 3), ("spu", 3), ("ewc", 3), ("random_mask", 3)]
)
def test_resume_ends_equal_to_an_uninterrupted_run(compose, tmp_path, strategy, stop_at):
    # 8 records, batch 4: 2 steps per epoch; 5 steps in all, interrupted at `stop_at` (3: mid-epoch).
    common = [
        "trainer.max_steps=5",
        "data.target.sizes.train=8",
        "trainer.limit_val_batches=0",
        f"strategy={strategy}",
        "strategy.score_fraction=0.5" if strategy == "spu" else "seed=42",
    ]
    whole = api.build(compose(*common))
    whole.trainer.fit(whole.module, datamodule=whole.datamodule)

    first = api.build(compose(*common, CKPT))
    first.trainer.callbacks.append(StopAt(stop_at))
    first.trainer.fit(first.module, datamodule=first.datamodule)
    assert first.trainer.global_step == stop_at
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False, map_location="cpu")["state_dict"]
    assert "model.model.vision_tower.post_layernorm.weight" not in state  # frozen: not checkpointed

    resumed = api.build(compose(*common, f"ckpt_path={ckpt}"))
    resumed.trainer.fit(resumed.module, datamodule=resumed.datamodule, ckpt_path=str(ckpt))
    assert resumed.trainer.global_step == 5
    a, b = whole.backbone.model.state_dict(), resumed.backbone.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_from_another_model_is_refused(compose, tmp_path):
    first = api.build(compose(CKPT, "trainer.max_steps=1"))
    first.trainer.fit(first.module, datamodule=first.datamodule)
    other = api.build(compose("++model.tiny.text_layers=2", "trainer.max_steps=2"))
    with pytest.raises(ValueError, match="is of another model: llava from tiny"):
        other.trainer.fit(
            other.module, datamodule=other.datamodule, ckpt_path=str(tmp_path / "run" / "checkpoints" / "last.ckpt")
        )


def test_ddp_fork_two_processes_score_every_sample_once(compose):
    cfg = compose(
        "hardware=ddp_cpu",
        "hardware.lightning_strategy=ddp_fork",
        "trainer.limit_test_batches=1.0",
        "data.eval_batch_size=2",
        "data.target.sizes.test=9",
        *(f"+data.upstream.{s}.sizes.test=5" for s in UPSTREAM),
    )
    results = run(cfg)
    assert results["global_steps"] == 2
    assert results["samples"] == {"digits": 9, **dict.fromkeys(UPSTREAM, 5)}  # odd sizes: padded shards, counted once


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_train_and_test_on_cpu(compose, precision):
    results = run(compose(f"hardware.precision={precision}", "trainer.max_steps=1"))
    assert results["global_steps"] == 1 and set(results["scores"]["final"]) == {"digits", *UPSTREAM}


@pytest.mark.parametrize("strategy", ALL_TRAINING_STRATEGIES)
def test_every_strategy_runs_the_whole_job(compose, strategy):
    results = run(compose(f"strategy={strategy}", "zeroshot_test=true"))
    assert results["run"]["strategy"] == strategy and results["global_steps"] == 2
    assert {"S_t", "S_u", "H", "E", "F", "O"} <= set(results["tradeoff"]["final"])


@pytest.mark.parametrize("strategy", [[], ["strategy=lora", "strategy.init=gaussian", "scope=connector_llm"]])
def test_eval_of_a_training_checkpoint_reproduces_the_trained_scores(compose, tmp_path, strategy):
    trained = run(compose(CKPT, "trainer.max_steps=3", "trainer.limit_test_batches=2", *strategy))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evaluated = run(
        compose(f"ckpt_path={ckpt}", "trainer.limit_test_batches=2", *strategy, config_name="eval", run_dir="eval")
    )
    assert evaluated["run"]["strategy"] == ("lora" if strategy else "zeroshot") and evaluated["global_steps"] == 0
    assert evaluated["scores"]["final"] == trained["scores"]["final"]
    a = (tmp_path / "run" / "predictions" / "final-digits.jsonl").read_text()
    assert a == (tmp_path / "eval" / "predictions" / "final-digits.jsonl").read_text()


def test_captions_generate_longer_than_short_answers(compose, tiny_backbone):
    from mllmft.data import KarpathyCaptions

    cfg = compose()
    parts = api.build(cfg)
    assert parts.module.test_lengths == [8] * 4  # the built-in sets' own: their longest answer is 5 tokens
    assert KarpathyCaptions("c", "/x", {}).max_new_tokens == 64


def test_engines_are_named_from_the_config_and_fsdp1_is_refused_where_shards_matter(compose):
    from mllmft.engines import check_engine, configured_engine
    from mllmft.errors import ConfigError
    from mllmft.strategies import SPIDER, LoRA

    assert [
        configured_engine(s).name
        for s in (
            "auto",
            "ddp_fork",
            "fsdp",
            "deepspeed_stage_3",
            {"_target_": "lightning.pytorch.strategies.ModelParallelStrategy"},
            {"_target_": "mllmft.engines.ZeroStrategy"},
        )
    ] == ["local", "local", "fsdp1", "deepspeed", "fsdp2", "deepspeed"]
    with pytest.raises(ConfigError, match="hardware.lightning_strategy=fdsp: not a Lightning strategy"):
        configured_engine("fdsp")
    with pytest.raises(ConfigError, match="strategy=spider works on parameter shards through FSDP2 or DeepSpeed"):
        api.build(compose("strategy=spider", "hardware.lightning_strategy=fsdp"))
    check_engine(LoRA(), "fsdp")  # adapters are ordinary parameters: the optimizer alone trains them
    check_engine(SPIDER(), "deepspeed_stage_3")


@pytest.mark.parametrize("hardware", ["fsdp2_cpu", "deepspeed_zero2_cpu", "deepspeed_zero3_cpu"])
def test_adalora_is_refused_on_parameter_shards_at_start_up(compose, hardware):
    """peft's allocator multiplies whole parameters by their .grad (measured: a DTensor error inside
    peft under FSDP2, p.grad None under ZeRO-2/3); DDP ends equal to one process (tests/test_engines.py)."""
    from mllmft.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^strategy=adalora runs on one device or under DDP .*, not (fsdp2|deepspeed): peft"
    ):
        run(compose("strategy=adalora", f"hardware={hardware}"))
