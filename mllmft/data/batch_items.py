"""The records behind a collated batch, for objectives that make new inputs from its prompts (GRPO
samples answers to them and trains on its own answers)."""

from __future__ import annotations

from dataclasses import replace

from PIL import Image

from mllmft.data.record import Record, Turn


class BatchItems:
    """(index, record, images) of each sample of a batch, in order. A plain class, not a dataclass nor a
    collection: Lightning moves a batch to the device through its containers, and leaves this alone."""

    def __init__(self, indices: list[int], records: list[Record], images: list[list[Image.Image]]):
        self.indices, self.records, self.images = list(indices), list(records), list(images)

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, positions: list[int]) -> BatchItems:
        """The samples at ``positions``, in that order."""
        return BatchItems(
            [self.indices[i] for i in positions],
            [self.records[i] for i in positions],
            [self.images[i] for i in positions],
        )

    def repeated(self, times: int) -> BatchItems:
        """Each sample ``times`` times in turn (a, a, b, b ...): a group of answers per prompt."""
        return self.subset([i for i in range(len(self)) for _ in range(times)])

    def answered(self, answers: list[str]) -> BatchItems:
        """The samples with their last answer replaced by ``answers`` (one per sample)."""
        records = [
            replace(r, turns=(*r.prompt_turns, Turn("assistant", answer)), answers=(answer,))
            for r, answer in zip(self.records, answers)
        ]
        return BatchItems(self.indices, records, self.images)

    def collator_items(self) -> list[tuple[int, Record, list[Image.Image]]]:
        """What a collator takes."""
        return list(zip(self.indices, self.records, self.images))
