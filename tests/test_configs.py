"""Every YAML of every group composes, and what it describes can be built."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mllmft.backbones import Backbone
from mllmft.build import build_backbone
from mllmft.config import CONF_DIR
from mllmft.data import TestSet
from mllmft.merges import MergeMethod
from mllmft.objectives import Objective
from mllmft.strategies import TuningStrategy

ADDED_GROUPS = ("source", "datamodule", "upstream")
# Groups whose files need values a user must supply.
REQUIRED = {
    ("data", "llava_json"): [
        "data.target.image_root=/x",
        "data.target.train=/x/t.json",
        "data.target.val=/x/v.json",
        "data.target.test=/x/s.json",
    ]
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _cases():
    groups = [p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "local")]
    # a base such as model/_tiny.yaml is composed through the files that extend it, not alone
    return [(g, o) for g in sorted(groups) for o in _options(g) if not o.startswith("_")]


@pytest.mark.parametrize("group, option", _cases())
def test_every_yaml_composes_and_instantiates(compose, tiny_backbone, group, option):
    added = "+" if group in ADDED_GROUPS else ""  # groups used inside data configs, not in train.yaml
    config_name = "merge" if group == "merge" else "train"  # mllmft-merge's own group
    cfg = compose(f"{added}{group}={option}", *REQUIRED.get((group, option), []), config_name=config_name)
    OmegaConf.to_container(cfg, resolve=(group not in ("logger", "callbacks")))  # hydra: nodes need a run
    if group == "model":
        if cfg.model.checkpoint:  # a real checkpoint: not on this machine, so a clear, immediate error
            with pytest.raises(FileNotFoundError, match="model.checkpoint"):
                build_backbone(cfg.model)
        else:  # FAST leaves pre-training out: a random tiny model
            assert isinstance(build_backbone(cfg.model), Backbone)
    elif group == "source":  # a reader: builds without touching its files
        source = instantiate(cfg.source)
        assert source.name == option and source.metric
    elif group == "strategy":
        assert isinstance(instantiate(cfg.strategy), TuningStrategy)
    elif group == "objective":
        objective = instantiate(cfg.objective)
        assert isinstance(objective, Objective) and objective.name == option  # named by its config file
    elif group == "merge":
        method = instantiate(cfg.merge)
        assert isinstance(method, MergeMethod) and method.name == option
    elif group == "data":
        dm = instantiate(cfg.data, _partial_=True)(processor=tiny_backbone.processor)
        if option in ("digits", "shapes"):  # real data sets are read in test_readers.py, from fixtures
            dm.setup("test")
            assert len(dm.test_dataloader()) == 1 + len(cfg.data.upstream)
    elif group in ("hardware", "trainer", "debug", "experiment", "hparams_search"):
        if cfg.hardware.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("needs a GPU")
        cfg.trainer.default_root_dir = str(cfg.paths.output_dir)
        assert isinstance(instantiate(cfg.trainer), L.Trainer)
    elif group in ("logger", "callbacks"):
        for node in (cfg.get(group) or {}).values():
            assert instantiate(node, **({"name": "t"} if "WandbLogger" in node._target_ else {})) is not None
    elif group == "module":
        strategy = instantiate(cfg.strategy)
        module = instantiate(cfg.module, _partial_=True)(
            backbone=tiny_backbone, strategy=strategy, scope=cfg.scope, test_sets=[TestSet("a")]
        )
        assert isinstance(module, L.LightningModule)


def test_eval_config_composes(compose):
    from mllmft import api

    cfg = api.compose(["model.pretrain=null"], config_name="eval")
    assert cfg.strategy._target_.endswith("ZeroShot") and cfg.task_name == "eval"


def test_unknown_strategy_is_a_clear_error(compose):
    with pytest.raises(MissingConfigException) as err:
        compose("strategy=nope")
    message = str(err.value)
    assert "strategy/nope" in message and "full" in message and "zeroshot" in message


def test_config_groups_are_documented_in_readme():
    readme = (Path(CONF_DIR).parent / "README.md").read_text()
    for group in (
        "model",
        "scope",
        "strategy",
        "objective",
        "data",
        "hardware",
        "merge",
        "source",
        "experiment",
        "hparams_search",
    ):
        for option in _options(group):
            if not option.startswith("_"):  # a base that the group's files extend
                assert f"`{option}`" in readme, f"README does not mention {group}={option}"


@pytest.mark.parametrize(
    "option, stage, offload",
    [
        ("deepspeed_zero2", 2, None),
        ("deepspeed_zero3", 3, None),
        ("deepspeed_zero2_offload", 2, "cpu"),
        ("deepspeed_zero3_offload", 3, "cpu"),
        ("deepspeed_zero2_cpu", 2, None),
        ("deepspeed_zero3_cpu", 3, None),
    ],
)
def test_deepspeed_choices_carry_their_config(compose, option, stage, offload):
    from mllmft.engines import ZeroStrategy

    cfg = compose(f"hardware={option}", "hardware.lightning_strategy.config.zero_optimization.reduce_bucket_size=7")
    strategy = instantiate(cfg.hardware.lightning_strategy)  # builds without a GPU (DeepSpeed starts at fit)
    assert isinstance(strategy, ZeroStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage and zero["reduce_bucket_size"] == 7  # overridable from the command line
    assert zero.get("offload_optimizer", {}).get("device") == offload
    if option == "deepspeed_zero3_offload":
        assert zero["offload_param"]["device"] == "cpu"


def test_slurm_launcher_composes_one_job_per_sweep_point():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "hardware=deepspeed_zero3", "hardware.devices=8", "hardware.num_nodes=2"]
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)  # one task per GPU
