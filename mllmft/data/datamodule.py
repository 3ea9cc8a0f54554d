"""Target train/val/test plus upstream test sets, collated with the backbone's processor."""

from __future__ import annotations

from typing import Protocol

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from mllmft.data.prefix_suffix import make_collator
from mllmft.data.record import Record
from mllmft.errors import ConfigError, DataError


class Source(Protocol):
    """A data set: a name, the metric that scores it, and its records per split ("train", "val", "test")."""

    name: str
    metric: str  # a key of mllmft.metrics.METRICS

    def records(self, split: str) -> list[Record]: ...


class RecordDataset(Dataset):
    def __init__(self, records: list[Record]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        return i, record, record.load_image()


IMAGE_CHECKS = ("header", "exists", "none")


class ResumableSampler(DistributedSampler):
    """A seeded DistributedSampler that can begin one epoch part-way, for a mid-epoch resume.

    Its order is a function of (seed, epoch) only; after ``resume_at(epoch, n)`` the next pass over
    that epoch skips its first n indices (the batches trained before the interruption). Its length
    stays the full epoch's, as Lightning's restored batch counter expects.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, start: int) -> None:
        self._resume = (epoch, start)

    def __iter__(self):
        indices = list(super().__iter__())
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            indices = indices[resume[1]:]
        return iter(indices)


class MLLMDataModule(L.LightningDataModule):
    """``test_dataloader`` returns the target's test set first, then each upstream set."""

    def __init__(self, processor, target: Source, upstream: dict[str, Source] | None = None,
                 batch_size: int = 16, eval_batch_size: int = 32, num_workers: int = 0,
                 max_length: int = 256, seed: int = 0, image_check: str = "header"):
        super().__init__()
        if image_check not in IMAGE_CHECKS:
            raise ConfigError(f"data.image_check={image_check!r}; expected one of {IMAGE_CHECKS}")
        self.processor = processor
        self.target = target
        self.upstream = dict(upstream or {})
        for key, source in self.upstream.items():
            if source.name != key:
                raise ConfigError(f"data.upstream.{key} holds a data set named {source.name!r}; "
                                 "give it the key's name")
        if target.name in self.upstream:
            raise ConfigError(f"data set {target.name!r} is both the target and an upstream set")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        self.seed = seed
        self.image_check = image_check
        self._splits: dict[tuple[str, str], RecordDataset] = {}
        self._resume: dict = {}

    @property
    def test_set_names(self) -> list[str]:
        return [self.target.name, *self.upstream]

    @property
    def test_sets(self) -> dict[str, str]:
        """{set name: metric name}, the target first."""
        return {source.name: source.metric for source in self.test_sources()}

    @property
    def test_max_new_tokens(self) -> dict[str, int | None]:
        """{set name: generation length, or None for the module's default}."""
        return {source.name: getattr(source, "max_new_tokens", None) for source in self.test_sources()}

    def split(self, source: Source, split: str) -> RecordDataset:
        """Read, validate and cache one split (validation happens here, before any step runs)."""
        key = (source.name, split)
        if key not in self._splits:
            records = source.records(split)
            if not records:
                raise DataError(f"data set {source.name!r} has no {split!r} records")
            for record in records:
                record.validate()
                if self.image_check != "none":
                    record.check_image(thorough=self.image_check == "header")
            self._splits[key] = RecordDataset(records)
        return self._splits[key]

    def _has(self, source: Source, split: str) -> bool:
        return getattr(source, "has_split", lambda _: True)(split)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split(self.target, "train")
            if self._has(self.target, "val"):
                self.split(self.target, "val")
        if stage in (None, "test"):
            for source in self.test_sources():
                self.split(source, "test")

    def test_sources(self) -> list[Source]:
        return [self.target, *self.upstream.values()]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, shuffle: bool, generate: bool, batch_size: int | None = None) -> DataLoader:
        world, rank = self._world()
        # Samplers are built here rather than injected by Lightning: the training order is a
        # function of (seed, epoch) only, so a resumed run sees the same batches, and evaluation
        # shards are padded to equal length (every rank runs the same number of steps) while the
        # metrics drop the padding by sample index.
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        batch_size = batch_size or (self.batch_size if shuffle else self.eval_batch_size)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=make_collator(self.processor, self.max_length, generate),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.split(self.target, "train"), shuffle=True, generate=False)
        if self._resume:
            loader.sampler.resume_at(self._resume["epoch"], self._resume["batches_done"] * self.batch_size)
            self._resume = {}
        return loader

    def upstream_train_dataloader(self, split: str = "train", batch_size: int | None = None) -> DataLoader:
        """Training-style batches of every upstream set's ``split`` (EWC's Fisher, replay...)."""
        if not self.upstream:
            raise ConfigError("this strategy needs upstream data, and data.upstream is empty")
        dataset = ConcatDataset([self.split(source, split) for source in self.upstream.values()])
        return self._loader(dataset, shuffle=True, generate=False, batch_size=batch_size)

    # Saved in Lightning checkpoints: where in its epoch training stopped, so a resumed run trains
    # on the batches an uninterrupted one would have (Lightning alone would restart the epoch's data).
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def val_dataloader(self) -> DataLoader | list:
        # Validation measures the loss, so it collates like training (labels, right padding).
        if not self._has(self.target, "val"):
            return []  # the target has no validation split: Lightning skips validation
        return self._loader(self.split(self.target, "val"), shuffle=False, generate=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.split(s, "test"), shuffle=False, generate=True)
                for s in self.test_sources()]
