"""Replay: a fixed share of every training batch drawn from other data sets, by default the upstream
sets' training splits (``data.replay={ratio: 0.25}``): the default remedy for forgetting in
LLaMA-Factory and ms-swift, and a baseline any strategy and objective compose with.

Each batch of ``data.batch_size`` holds k = round(ratio · batch_size) replay samples and the rest from
the target, so the share is the same in every batch, whatever the sizes of the sets. An epoch is one
pass over the target; the replay samples follow their own seeded order, cycling through the replay pool
as often as the target's epoch needs. Both orders are functions of (seed, epoch) only, sharded over the
ranks as DistributedSampler shards, so a resumed run and every engine see the same batches.

A replay split must share no sample with any test split: the run stops at start-up if one does (the
same id within a data set, or the same content, images and text, anywhere), since a test it trained on
would measure memory, not retention.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Sampler

from mllmft.checks import check_number
from mllmft.data.record import Record
from mllmft.errors import ConfigError, DataError


@dataclass
class Replay:
    """``ratio`` of each training batch from ``sets``' ``split`` (``sets`` empty: the upstream sets)."""

    ratio: float
    sets: dict = field(default_factory=dict)  # name -> Source
    split: str = "train"

    def per_batch(self, batch_size: int) -> int:
        """Replay samples in each batch of ``batch_size``."""
        return round(self.ratio * batch_size)

    def summary(self, names: list[str]) -> dict:
        """What results.json records under ``run.replay``."""
        return {"ratio": self.ratio, "sets": names, "split": self.split}


def replay_settings(replay: Mapping | Replay | None, batch_size: int) -> Replay | None:
    """``data.replay`` checked against the batch size: at least one replay and one target sample a batch."""
    if replay is None or isinstance(replay, Replay):
        settings = replay
    elif isinstance(replay, Mapping):
        unknown = sorted(set(replay) - {"ratio", "sets", "split"})
        if unknown:
            raise ConfigError(f"data.replay has unknown keys {unknown}; expected ratio, sets, split")
        settings = Replay(replay.get("ratio"), dict(replay.get("sets") or {}), replay.get("split", "train"))  # type: ignore[arg-type]  # checked below
    else:
        raise ConfigError(f"data.replay={replay!r}; expected a mapping such as {{ratio: 0.25}}")
    if settings is None:
        return None
    check_number("data.replay.ratio", settings.ratio, 0, 1, low_open=True, high_open=True)
    if not isinstance(settings.split, str):
        raise ConfigError(f"data.replay.split={settings.split!r}; expected a split name such as train")
    k = settings.per_batch(batch_size)
    if not 1 <= k < batch_size:
        raise ConfigError(
            f"data.replay.ratio={settings.ratio} of data.batch_size={batch_size} is {settings.ratio * batch_size:g} "
            "samples a batch: it must round to at least 1 replay and 1 target sample"
        )
    return settings


class MixedBatches(Sampler[list[int]]):
    """Batches of indices into ConcatDataset([target, replay pool]): ``batch_size - k`` target indices,
    then ``k`` replay ones (offset by ``n_target``), for this rank of ``world``."""

    def __init__(self, n_target: int, n_replay: int, batch_size: int, k: int, world: int, rank: int, seed: int):
        self.n_target, self.n_replay, self.k = n_target, n_replay, k
        self.batch_size = batch_size  # read by Lightning's DeepSpeed strategy as its micro-batch size
        self.per_batch_target = batch_size - k
        self.world, self.rank, self.seed = world, rank, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over ``epoch`` skips its first ``batches_done`` batches (a mid-epoch resume)."""
        self._resume = (epoch, batches_done)

    def _shard(self, n: int, stream: int) -> list[int]:
        """This rank's part of a seeded permutation of range(n), padded (from its start) to equal parts."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 2 + stream)
        order = torch.randperm(n, generator=generator).tolist()
        padded = [order[i % n] for i in range(math.ceil(n / self.world) * self.world)]  # n < world: cycled
        return padded[self.rank :: self.world]

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n_target / self.world) / self.per_batch_target)

    def __iter__(self) -> Iterator[list[int]]:
        target, replay = self._shard(self.n_target, 0), self._shard(self.n_replay, 1)
        skip, self._resume = (self._resume[1] if self._resume and self._resume[0] == self.epoch else 0), None
        for b in range(skip, len(self)):
            chunk = target[b * self.per_batch_target : (b + 1) * self.per_batch_target]
            drawn = [replay[(b * self.k + j) % len(replay)] for j in range(self.k)]  # cycling through the pool
            yield chunk + [self.n_target + i for i in drawn]


def content_key(record: Record) -> str:
    """A hash of what a sample asks: its images (their files' bytes, or pixels) and its prompt (a test
    question trained on with another reference answer is still the test's question)."""
    digest = hashlib.sha256()
    for turn in record.prompt_turns:
        digest.update(f"{turn.role}\0{turn.text}\0".encode())
    pictures: list | None = None
    for k, image in enumerate(record.images):
        if isinstance(image, (str, Path)):
            digest.update(Path(image).read_bytes())
        else:  # drawn or decoded in memory (the built-in sets): its pixels
            pictures = pictures or record.load_images()
            digest.update(f"{pictures[k].mode}{pictures[k].size}".encode() + pictures[k].tobytes())
    return digest.hexdigest()


def refuse_test_overlap(replay: dict[str, list[Record]], tests: dict[str, list[Record]]) -> None:
    """No replay record is a test record: by id within a data set, by content anywhere."""
    for name, records in replay.items():
        test_ids = {r.id for r in tests.get(name, [])}
        same = next((r for r in records if r.id in test_ids), None)
        if same is not None:
            raise DataError(f"data.replay: {same.where()} of {name!r} is also in its test split (the same id)")
    tested = {content_key(r): (name, r) for name, records in tests.items() for r in records}
    for name, records in replay.items():
        for record in records:
            hit = tested.get(content_key(record))
            if hit is not None:
                raise DataError(
                    f"data.replay: {record.where()} of {name!r} has the same images and prompt as {hit[1].where()} "
                    f"of the {hit[0]!r} test split: a test the model trained on measures memory, not retention"
                )
