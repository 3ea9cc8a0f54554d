"""The LightningModule: training loss, validation loss, generation-based testing, optimizer groups."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

import lightning as L
import torch
from lightning import Callback
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from mllmft.answer_logits import LOGITS, AnswerOutputs
from mllmft.backbones import FAMILIES, Backbone
from mllmft.checkpoint_match import check_checkpoint
from mllmft.checks import check_bool, check_number
from mllmft.data.test_set import TestSet
from mllmft.engines import Engine, engine_for
from mllmft.engines.fsdp2 import root_gathered, shard_model
from mllmft.errors import ConfigError
from mllmft.metrics import GeneratedAnswers, build_metric
from mllmft.objectives import SFT, Objective
from mllmft.packing import batch_tokens, pack
from mllmft.preemption import PreemptionCheckpoint
from mllmft.scope import param_groups
from mllmft.strategies import TuningStrategy
from mllmft.strategies.core import StrategyRunner


def logged_test_scores(
    trainer: L.Trainer, names: list[str]
) -> tuple[dict[str, float], dict[str, int], dict[str, dict]]:
    """({set: headline score}, {set: samples scored}, {set: every other figure}) of the last test run, from
    what the module logged: under ddp_fork/spawn the test runs in child processes and only the logged
    metrics come back to the launching one."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    details = {
        n: {
            k[len(f"test/{n}/") :]: v
            for k, v in metrics.items()
            if k.startswith(f"test/{n}/") and not k.endswith("/samples")
        }
        for n in names
    }
    return ({n: metrics[f"test/{n}"] for n in names}, {n: int(metrics[f"test/{n}/samples"]) for n in names}, details)


def check_hyperparameters(
    lr: float,
    weight_decay: float = 0.0,
    max_new_tokens: int = 16,
    optimizer: Callable | Mapping | None = None,
    scheduler: Callable | Mapping | None = None,
) -> None:
    """The optimisation and generation knobs, in range (``module.*`` in the config); the optimizer's and
    the scheduler's are checked where they are the known ones (AdamW's betas, the cosine's ratios)."""
    check_number("module.lr", lr, 0, low_open=True)
    check_number("module.weight_decay", weight_decay, 0)
    check_number("module.max_new_tokens", max_new_tokens, 1, integer=True)
    betas = _keywords(optimizer).get("betas")
    if betas is not None:
        if len(betas) != 2:
            raise ConfigError(f"module.optimizer.betas={list(betas)}; expected two numbers [beta1, beta2]")
        for i, beta in enumerate(betas):
            check_number(f"module.optimizer.betas[{i}]", beta, 0, 1, high_open=True)
    for knob in ("warmup_ratio", "min_lr_ratio"):
        if (value := _keywords(scheduler).get(knob)) is not None:
            check_number(f"module.scheduler.{knob}", value, 0, 1)
    if (eps := _keywords(optimizer).get("eps")) is not None:
        check_number("module.optimizer.eps", eps, 0)
    for kernel in ("fused", "foreach"):  # AdamW's kernels: a string such as "no" would switch one on
        if (value := _keywords(optimizer).get(kernel)) is not None:
            check_bool(f"module.optimizer.{kernel}", value)
    if (fraction := _keywords(optimizer).get("fraction")) is not None:  # MoFO's
        check_number("module.optimizer.fraction", fraction, 0, 1, low_open=True)
    for group, factory in (("optimizer", optimizer), ("scheduler", scheduler)):  # any other: finite at least
        for knob, value in _keywords(factory).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                check_number(f"module.{group}.{knob}", value)


def fused_refused(precision: str, gradient_clip_val) -> bool:
    """Whether Lightning refuses to clip a fused optimizer's gradients (its mixed-precision plugins; "16" and
    "bf16" are its aliases of the mixed ones)."""
    return ("mixed" in precision or precision in ("16", "bf16")) and bool(gradient_clip_val)


def _keywords(factory: Callable | Mapping | None) -> Mapping:
    """A ``_partial_`` config's arguments: from the config node, or from the partial Hydra made of it."""
    if isinstance(factory, functools.partial):
        return factory.keywords
    return factory if isinstance(factory, Mapping) else {}


def cosine_factor(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """The lr multiplier at each step: linear warm-up from 1/warmup_steps to 1, then a half cosine to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """The default ``module.scheduler``: warm-up over ``warmup_ratio`` of the optimizer steps (at least
    one), then cosine decay to ``min_lr_ratio`` of each group's lr. Stepped every optimizer step."""
    warmup = max(1, int(warmup_ratio * num_training_steps))
    return LambdaLR(optimizer, cosine_factor(warmup, num_training_steps, min_lr_ratio))


class MLLMFineTuner(L.LightningModule):
    """Fine-tunes ``backbone.model`` with a tuning strategy; tests by greedy generation.

    ``test_sets`` describes the test dataloaders, in order (the target first): name, metric, answer
    length; after each ``trainer.test`` read the scores with ``logged_test_scores(trainer, names)``.
    Predictions go to ``<run dir>/predictions/<test_phase>-<set>.jsonl`` (id, prompt, prediction,
    references, score).
    """

    def __init__(
        self,
        backbone: Backbone,
        strategy: TuningStrategy,
        scope: Mapping,
        test_sets: Sequence[TestSet],
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., LRScheduler] | None = None,
        max_new_tokens: int = 16,
        run_identity: dict | None = None,
        objective: Objective | None = None,
        logits: str = "answers",
        packing: bool = False,
        pack_tokens: int | None = None,
    ):
        super().__init__()
        check_hyperparameters(lr, weight_decay, max_new_tokens, optimizer, scheduler)
        if logits not in LOGITS:
            raise ConfigError(f"module.logits={logits!r}; expected one of {', '.join(LOGITS)}")
        self.backbone = backbone
        self.model = backbone.model
        self.strategy = strategy
        self.objective = objective or SFT()  # the loss of a batch (objective=); the strategy adds its term
        self.scope = scope
        self.test_sets = list(test_sets)
        self.test_set_names = [t.name for t in self.test_sets]
        self.test_phase = "test"  # names the predictions files: "zeroshot", "final"
        self.lr, self.weight_decay = lr, weight_decay
        # ``_partial_`` configs (module.optimizer, module.scheduler): called with the parameter groups
        # (each with its component's lr and weight decay), and with the optimizer and the step count
        self.make_optimizer = optimizer or torch.optim.AdamW
        self.make_scheduler = scheduler or cosine_with_warmup
        self.max_new_tokens = max_new_tokens
        self.logits = logits  # the LM head on the answer positions only, or on every one (mllmft.answer_logits)
        # training and validation batches packed into rows of at most pack_tokens tokens (mllmft.packing)
        self.packing, self.pack_tokens = packing, pack_tokens
        self.test_lengths = [t.max_new_tokens or max_new_tokens for t in self.test_sets]
        self.test_metrics = torch.nn.ModuleList(build_metric(**t.metric) for t in self.test_sets)
        self._test_started = 0.0
        self._stepped = 0  # the optimizer steps taken when the gradients were last freed
        # what its checkpoints record so that only the same run's model loads them (checkpoint_match)
        self.run_identity = run_identity
        # Checkpoints hold trainable parameters only (the frozen rest comes from model.checkpoint):
        # a 7B LLaVA with two trainable layers checkpoints in hundreds of MB, not 14 GB.
        self.strict_loading = False

    # --- training -----------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``packing``: a training or validation batch (test batches are prompts to generate from) as rows
        of samples laid end to end, before any hook or step sees it, with ``tokens``, its count but padding
        (``packing.batch_tokens``)."""
        if not self.packing or not isinstance(batch, dict) or batch.get("labels") is None:
            return batch
        positions = FAMILIES[self.backbone.family].packing_positions
        assert positions is not None, "check_packing refused the family at start-up"
        tokens = batch_tokens(batch)
        inputs, labels = pack(batch["model_inputs"], batch["labels"], self.pack_tokens, positions, self.model)
        return {**batch, "model_inputs": inputs, "labels": labels, "tokens": tokens}

    def forward_answers(self, batch: dict) -> AnswerOutputs:
        """The model on a batch: its answer tokens' logits and their mean cross-entropy."""
        return AnswerOutputs(self.model, batch["model_inputs"], batch["labels"], self.logits)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.forward_answers(batch)
        loss, logged = self.objective.loss(self, batch, outputs)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        for key, value in logged.items():
            self.log(f"train/{key}", value, batch_size=len(batch["ids"]))
        extra = self.strategy.extra_loss(self, batch, outputs)
        if extra is not None:
            self.log("train/extra_loss", extra, batch_size=len(batch["ids"]))
            loss = loss + extra
        return loss

    def on_train_start(self) -> None:
        self._stepped = self.global_step  # a resumed run continues from its checkpoint's step

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Lightning frees the gradients when the next step's backward begins, so that step's forward — the
        # step's peak — would run with a whole set of gradients still held: one more copy of the trainable
        # weights. Freed here instead, once a step has used them (not while accumulating) and every callback
        # has read them (callbacks' on_train_batch_end run first: AdaLoRA's budget reads them).
        if self.global_step != self._stepped:
            self._stepped = self.global_step
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)

    def on_fit_end(self) -> None:
        # the steps the weights have had, a resumed checkpoint's included (one already finished trains
        # no more): in callback_metrics, which Lightning hands back to the launching process under
        # ddp_fork/spawn, where the fit ran in child processes
        self.trainer.callback_metrics["trainer/steps"] = torch.tensor(float(self.global_step))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.forward_answers(batch).loss
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["ids"]))

    def configure_optimizers(self):
        groups = param_groups(self.backbone, self.scope, self.lr, self.weight_decay)
        if not groups:
            raise ConfigError(
                "nothing to train: the scope leaves no parameter trainable (use strategy=zeroshot to evaluate only)"
            )
        optimizer = self.make_optimizer(groups, lr=self.lr, **self._adamw_kernel())
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = self.make_scheduler(optimizer, num_training_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _adamw_kernel(self) -> dict:
        """``module.optimizer.fused=null`` on torch's AdamW: its fused kernel (equal to the per-tensor loop
        within float round-off, faster, no per-tensor temporaries), but where Lightning's mixed precision
        clips the gradients: it refuses to clip a fused optimizer's (which unscales them itself)."""
        factory = self.make_optimizer
        keywords = factory.keywords if isinstance(factory, functools.partial) else {"fused": False}
        adamw = getattr(factory, "func", None) is torch.optim.AdamW
        if keywords.get("fused", False) is not None or keywords.get("foreach") or not adamw:
            return {}  # chosen, or the multi-tensor form asked for (torch refuses both at once)
        return {"fused": not fused_refused(str(self.trainer.precision), self.trainer.gradient_clip_val)}

    def configure_model(self) -> None:
        """FSDP2 under ``ModelParallelStrategy`` (``engines.fsdp2.shard_model``). Lightning calls this
        before each fit/test; a sharded model stays as it is."""
        if self.device_mesh is not None:  # set by ModelParallelStrategy only
            shard_model(self.model, list(self.backbone.components.layers.values()), self.device_mesh)

    @property
    def engine(self) -> Engine:
        """The engine adapter of the trainer's Lightning strategy (``mllmft.engines``)."""
        return engine_for(self.trainer)

    def configure_callbacks(self) -> list[Callback]:
        """The tuning strategy's callbacks: its runner (the tensor hooks on every engine) when any hook
        does work, and its own (peft's schedules); the module is the strategy's one holder. Then the stop on
        a pre-emption signal, after them: a step is whole (the strategy's after_step done) when it saves."""
        runner = [StrategyRunner(self.strategy, self.backbone.components)] if self.strategy.acts_on_training else []
        # Lightning asks again at every fit and test: those attached before stay (no "override" notice)
        attached = {type(c) for c in getattr(self._trainer, "callbacks", ())}
        return [c for c in (*runner, *self.strategy.callbacks(), PreemptionCheckpoint()) if type(c) not in attached]

    # --- testing by generation -----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model_inputs: dict, max_new_tokens: int | None = None, **sampling) -> list[str]:
        """Batched decoding with the KV cache, greedy unless ``sampling`` says otherwise (``do_sample``,
        ``temperature``, ``top_p``: GRPO's answers); prompts are left-padded by the collator."""
        tokenizer = self.backbone.processor.tokenizer
        # Under FSDP2 and ZeRO-3 every forward gathers weights from every rank: a rank whose batch is
        # done must keep stepping (synced_gpus) until all are, or the others wait for it forever.
        synced = self._trainer is not None and self.trainer.world_size > 1 and self.engine.gathers_weights
        with root_gathered(self.model):
            output = self.model.generate(
                **model_inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                synced_gpus=synced,
                **{"do_sample": False, **sampling},
            )
        new_tokens = output[:, model_inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        predictions = self.generate(batch["model_inputs"], self.test_lengths[dataloader_idx])
        self.test_metric(dataloader_idx).update(
            batch["index"], batch["ids"], batch["prompts"], predictions, batch["references"], batch.get("options")
        )

    def test_metric(self, i: int) -> GeneratedAnswers:
        """The metric of test set ``i`` (a ModuleList item, typed)."""
        return cast(GeneratedAnswers, self.test_metrics[i])

    def on_test_epoch_start(self) -> None:
        self._test_started = time.perf_counter()

    def on_test_epoch_end(self) -> None:
        # Logged (not only returned) so the numbers reach the launching process under ddp_fork/spawn,
        # where this module lives in child processes: read them with `logged_test_scores(trainer, ...)`.
        seconds = time.perf_counter() - self._test_started
        total = 0.0
        for i, name in enumerate(self.test_set_names):
            metric = self.test_metric(i)
            result = metric.compute()
            total += result["samples"]
            self.log(f"test/{name}", result.pop("score"), add_dataloader_idx=False)
            self.log_dict({f"test/{name}/{k}": float(v) for k, v in result.items()}, add_dataloader_idx=False)
            if self.trainer.is_global_zero:
                self._write_predictions(name, metric)
            metric.reset()
        self.log("test/samples_per_s", total / max(seconds, 1e-9), add_dataloader_idx=False)

    def _write_predictions(self, name: str, metric) -> None:
        path = Path(self.trainer.default_root_dir) / "predictions" / f"{self.test_phase}-{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for answer, score in metric.last_per_sample:
                f.write(
                    json.dumps(
                        {
                            "id": answer.id,
                            "prompt": answer.prompt,
                            "prediction": answer.prediction,
                            "references": list(answer.references),
                            "score": score,
                        }
                    )
                    + "\n"
                )

    # --- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        # the strategy's own state is the StrategyRunner's (a callback state, per rank when sharded)
        checkpoint["objective"] = self.objective.state_dict()  # e.g. self_targets' answers in use
        checkpoint["mllmft"] = {
            "backbone_source": self.backbone.source,
            "strategy": self.strategy.name,
            **(self.run_identity or {}),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.run_identity is not None:
            check_checkpoint(
                checkpoint,
                self.run_identity,
                "the checkpoint",
                resuming=self.trainer.state.fn == "fit",
                model_state=self.state_dict(),
            )
        self.objective.load_state_dict(checkpoint.get("objective", {}))
        if "state_dict" not in checkpoint:  # FSDP2 / DeepSpeed restore the tensors themselves
            return
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        unexpected = sorted(set(checkpoint["state_dict"]) - set(self.state_dict()))
        if unexpected:
            raise ConfigError(
                f"the checkpoint holds {len(unexpected)} tensors this model does not have "
                f"(e.g. {unexpected[:3]}): was it made with another model, or with a peft "
                "strategy (evaluate it with the same strategy=..., scope=...)?"
            )
        missing = sorted(trainable - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(
                f"the checkpoint lacks {len(missing)} trainable parameters of this run "
                f"(e.g. {missing[:3]}): was it made with another scope or strategy?"
            )
