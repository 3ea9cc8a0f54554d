"""Target train/val/test plus upstream test sets, collated by the model family's collator (a chat template
by default) with the backbone's processor."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from mllmft.checks import check_number
from mllmft.console import progress
from mllmft.data.collate import ConversationCollator
from mllmft.data.images import MAX_IMAGE_PIXELS, NOTES
from mllmft.data.record import IMAGE_CHECKS, Record
from mllmft.data.replay import MixedBatches, Replay, refuse_test_overlap, replay_settings
from mllmft.data.sizes import check_sizes
from mllmft.data.test_set import TestSet
from mllmft.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class Source(Protocol):
    """A data set: a name, the metric that scores it, and its records per split ("train", "val", "test")."""

    name: str
    metric: str  # a key of mllmft.metrics.METRICS

    def records(self, split: str) -> list[Record]: ...


class RecordDataset(Dataset):
    def __init__(self, records: list[Record], max_image_pixels: int = MAX_IMAGE_PIXELS):
        self.records = records
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        return i, record, record.load_images(self.max_image_pixels)


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
            indices = indices[resume[1] :]
        return iter(indices)


class MLLMDataModule(L.LightningDataModule):
    """``test_dataloader`` returns the target's test set first, then each upstream set.

    Every split is checked when first read, before any step or evaluation runs: each record's
    fields; duplicate ids (a warning); no special token of the tokenizer written out in the text it
    encodes; image paths read from data files stay under their root (links resolved) unless
    ``allow_outside_root``; every image as thoroughly as ``image_check`` says (``decode``:
    fully decoded, with a count of images that needed converting; ``header``: opened and verified;
    ``exists``; ``none``) and no larger than ``max_image_pixels``; and, with ``length_check``, each
    record's token count as the processor encodes it (image tokens included) against ``max_length``,
    which also finds the images the processor refuses (Qwen2-VL's aspect-ratio limit).
    """

    def __init__(
        self,
        processor,
        target: Source,
        upstream: dict[str, Source] | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        max_length: int = 256,
        seed: int = 0,
        image_check: str = "decode",
        length_check: bool = True,
        allow_outside_root: bool = False,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        collator_class: type[ConversationCollator] = ConversationCollator,
        replay: Mapping | Replay | None = None,
    ):
        super().__init__()
        check_settings(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            max_length=max_length,
            image_check=image_check,
            max_image_pixels=max_image_pixels,
        )
        self.processor = processor
        self.collator_class = collator_class  # the model family's (Backbone.collator_class)
        self.target = target
        self.upstream = dict(upstream or {})
        for key, source in self.upstream.items():
            if source.name != key:
                raise ConfigError(f"data.upstream.{key} holds a data set named {source.name!r}; give it the key's name")
        if target.name in self.upstream:
            raise ConfigError(f"data set {target.name!r} is both the target and an upstream set")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        self.seed = seed
        self.image_check = image_check
        self.length_check = length_check
        self.allow_outside_root = allow_outside_root
        self.max_image_pixels = max_image_pixels
        # data.replay (mllmft/data/replay.py): its sets default to the upstream sets
        self.replay = replay_settings(replay, batch_size)
        if self.replay is not None and not (self.replay.sets or self.upstream):
            raise ConfigError(
                "data.replay mixes in the upstream sets by default, and data.upstream is empty: add data.replay.sets"
            )
        self._splits: dict[tuple[str, str], RecordDataset] = {}
        self._resume: dict = {}

    @property
    def test_set_names(self) -> list[str]:
        return [self.target.name, *self.upstream]

    @property
    def test_sets(self) -> list[TestSet]:
        """Each test set's name, metric spec and generation length, the target first."""
        return [
            TestSet(
                source.name,
                {"name": source.metric, **getattr(source, "metric_args", {})},
                getattr(source, "max_new_tokens", None),
            )
            for source in self.test_sources()
        ]

    def split(self, source: Source, split: str, generate: bool = False) -> RecordDataset:
        """Read, check and cache one split (the checks run here, before any step runs). ``generate``:
        the split is tested by generation, so its prompts (not whole conversations) must fit."""
        key = (source.name, split)
        if key not in self._splits:
            records = source.records(split)
            if not records:
                raise DataError(f"data set {source.name!r} has no {split!r} records")
            for record in records:
                record.validate()
            self.collator_class.check_image_counts(records)
            collator = self.collator_class(self.processor, self.max_length, generate)
            collator.check_texts(records)
            where = f"data set {source.name!r} ({split})"
            warn_duplicate_ids(where, records)
            if not self.allow_outside_root:
                refuse_outside_root(records)
            sizes = self._check_images(where, records)
            if self.length_check:
                self._check_lengths(collator, where, records, sizes)
            self._splits[key] = RecordDataset(records, self.max_image_pixels)
        return self._splits[key]

    def _check_images(self, where: str, records: list[Record]) -> list[tuple[tuple[int, int], ...]] | None:
        """Each record's images checked as ``image_check`` says; their sizes when the length check
        needs them (read from the headers where nothing was decoded)."""

        def inspect(record: Record) -> tuple[tuple[tuple[int, int], ...] | None, list[str]]:
            if self.image_check == "decode":
                decoded = record.decode_images(self.max_image_pixels)
                return tuple(image.size for image, _ in decoded), [note for _, note in decoded if note]
            record.check_files(self.image_check, self.max_image_pixels)
            return (record.image_sizes(self.max_image_pixels) if self.length_check else None), []

        if self.image_check == "none" and not self.length_check:
            return None
        # each file once (VQA sets ask several questions of an image, caption sets train on 5 captions
        # of one); decoding releases the GIL, so threads overlap the I/O and decoding of large sets
        first: dict[object, Record] = {}
        for record in records:
            first.setdefault(_image_key(record), record)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            checked = dict(
                zip(first, progress(pool.map(inspect, first.values()), f"checking images of {where}", len(first)))
            )
        notes = Counter(note for _, record_notes in checked.values() for note in record_notes)
        for note, count in sorted(notes.items()):
            log.warning("%s: %d image%s %s", where, count, "s" * (count > 1), NOTES[note])
        return [checked[_image_key(r)][0] for r in records]

    def _check_lengths(self, collator: ConversationCollator, where: str, records: list[Record], sizes) -> None:
        what = "prompt" if collator.generate else "conversation"
        lengths: list[int] = []
        for start in progress(range(0, len(records), 256), f"counting tokens of {where}", (len(records) + 255) // 256):
            lengths += collator.token_lengths(records[start : start + 256], sizes[start : start + 256])
        collator.check_lengths(records, lengths, what)

    def _has(self, source: Source, split: str) -> bool:
        return getattr(source, "has_split", lambda _: True)(split)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split(self.target, "train")
            if self._has(self.target, "val"):
                self.split(self.target, "val")
            if self.replay is not None:  # read, and checked against every test split, before any step
                refuse_test_overlap(
                    {s.name: self.split(s, self.replay.split).records for s in self.replay_sources()},
                    {s.name: self.split(s, "test", generate=True).records for s in self.test_sources()},
                )
        if stage in (None, "test"):
            for source in self.test_sources():
                self.split(source, "test", generate=True)

    def test_sources(self) -> list[Source]:
        return [self.target, *self.upstream.values()]

    def replay_sources(self) -> list[Source]:
        """The sets ``data.replay`` mixes into training batches (none without replay)."""
        if self.replay is None:
            return []
        return list((self.replay.sets or self.upstream).values())

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
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator_class(self.processor, self.max_length, generate),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.replay is not None:
            return self._replay_loader()
        loader = self._loader(self.split(self.target, "train"), shuffle=True, generate=False)
        if self._resume:
            assert isinstance(loader.sampler, ResumableSampler)  # _loader's, for shuffled training data
            loader.sampler.resume_at(self._resume["epoch"], self._resume["batches_done"] * self.batch_size)
            self._resume = {}
        return loader

    def _replay_loader(self) -> DataLoader:
        assert self.replay is not None
        target = self.split(self.target, "train")
        pool: ConcatDataset = ConcatDataset([self.split(s, self.replay.split) for s in self.replay_sources()])
        world, rank = self._world()
        batches = MixedBatches(
            len(target), len(pool), self.batch_size, self.replay.per_batch(self.batch_size), world, rank, self.seed
        )
        if self._resume:
            batches.resume_at(self._resume["epoch"], self._resume["batches_done"])
            self._resume = {}
        return DataLoader(
            ConcatDataset([target, pool]),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=self.collator_class(self.processor, self.max_length, False),
            persistent_workers=self.num_workers > 0,
        )

    def upstream_train_dataloader(self, split: str = "train", batch_size: int | None = None) -> DataLoader:
        """Training-style batches of every upstream set's ``split`` (EWC's Fisher, replay...)."""
        if not self.upstream:
            raise ConfigError("this strategy needs upstream data, and data.upstream is empty")
        dataset: ConcatDataset = ConcatDataset([self.split(source, split) for source in self.upstream.values()])
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
        return [
            self._loader(self.split(s, "test", generate=True), shuffle=False, generate=True)
            for s in self.test_sources()
        ]


def check_settings(
    batch_size: int = 1,
    eval_batch_size: int = 1,
    num_workers: int = 0,
    max_length: int = 1,
    image_check: str = "decode",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    target: Mapping | None = None,
    upstream: Mapping | None = None,
    replay: Mapping | None = None,
) -> None:
    """The data knobs, in range; ``target`` and ``upstream`` are the data sets' configs (a run checks
    their ``sizes`` here, before any model is built; each source checks its own again when built)."""
    for key, value, low in (
        ("batch_size", batch_size, 1),
        ("eval_batch_size", eval_batch_size, 1),
        ("num_workers", num_workers, 0),
        ("max_length", max_length, 1),
        ("max_image_pixels", max_image_pixels, 1),
    ):
        check_number(f"data.{key}", value, low, integer=True)
    if image_check not in IMAGE_CHECKS:
        raise ConfigError(f"data.image_check={image_check!r}; expected one of {IMAGE_CHECKS}")
    replay_settings(replay, batch_size)
    sources = {"data.target": target, **{f"data.upstream.{k}": v for k, v in (upstream or {}).items()}}
    for key, source in sources.items():
        if isinstance(source, Mapping):
            check_sizes(source.get("sizes"), f"{key}.sizes")


def _image_key(record: Record) -> tuple:
    return tuple(str(image) if isinstance(image, (str, Path)) else id(image) for image in record.images)


def warn_duplicate_ids(where: str, records: list[Record]) -> None:
    """Duplicate ids are legal (predictions are matched by position) but usually a mistake."""
    counts = Counter(r.id for r in records)
    repeated = {rid: n for rid, n in counts.items() if n > 1}
    if repeated:
        examples = ", ".join(repr(rid) for rid in list(repeated)[:3])
        log.warning(
            "%s: %d record ids occur more than once (%d records in all; e.g. %s)",
            where,
            len(repeated),
            sum(repeated.values()),
            examples,
        )


def refuse_outside_root(records: list[Record]) -> None:
    real_dirs: dict[str, str] = {}  # each folder resolved once for the whole split
    for record in records:
        path = record.path_outside_root(real_dirs)
        if path is not None:
            real = os.path.realpath(path)
            link = f" (resolves to {real})" if real != os.path.abspath(path) else ""
            raise DataError(
                f"{record.where()}: image path {path}{link} leaves the data root {record.image_root}; "
                "move the file under it, or set data.allow_outside_root=true"
            )
