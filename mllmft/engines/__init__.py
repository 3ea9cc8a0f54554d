"""Engines: how the model is spread over ranks, and how a tuning strategy reaches its part of it.

An engine is a Lightning strategy (which launches the ranks, shards the model, checkpoints it) plus
the adapter a tuning strategy works through (``Engine``: this rank's ``Fragment`` of every trainable
tensor, cross-rank reductions, publishing written weights). One file per engine holds all of it:

* base.py: ``Engine`` (one device, DDP: every tensor whole), ``ShardedEngine``, ``FSDP1Engine``;
* fsdp2.py: ``shard_model``, ``FSDP2Strategy``, ``FSDP2Engine``;
* zero.py: ``ZeroStrategy`` (DeepSpeed ZeRO-2/3, on CUDA and CPU), ``ZeroEngine``;
* rank_state.py: sharded checkpoints written whole, with each rank's ``PerRankState`` beside them;
* registry.py: the one table from a Lightning strategy to its engine (``engine_for``, ``check_engine``).
"""

from mllmft.engines.base import Engine, FSDP1Engine, ShardedEngine
from mllmft.engines.fragment import Fragment
from mllmft.engines.fsdp2 import FSDP2Engine, FSDP2Strategy
from mllmft.engines.rank_state import PerRankState, save_directory_whole
from mllmft.engines.registry import check_engine, configured_engine, engine_for
from mllmft.engines.zero import ZeroEngine, ZeroStrategy

__all__ = [
    "Engine",
    "FSDP1Engine",
    "FSDP2Engine",
    "FSDP2Strategy",
    "Fragment",
    "PerRankState",
    "ShardedEngine",
    "ZeroEngine",
    "ZeroStrategy",
    "check_engine",
    "configured_engine",
    "engine_for",
    "save_directory_whole",
]
