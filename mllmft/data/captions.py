"""Caption data sets: Karpathy-split JSON (COCO, Flickr30k) and COCO-style caption annotations.

Training uses one record per (image, caption); evaluation one record per image with all of its
captions as references (scored with CIDEr-D and the COCO metrics).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mllmft.data.file_source import FileSource
from mllmft.data.record import Record, single_turn

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."  # LLaVA-1.5's caption prompt


def _caption_records(name: str, items, prompt: str, split: str, origin: str) -> list[Record]:
    """items: (image id, image path, [captions]); expanded per caption for training."""
    out = []
    for image_id, image, captions in items:
        if split == "train":
            out += [
                single_turn(f"{name}-{image_id}-{j}", image, prompt, c, "caption", origin=origin)
                for j, c in enumerate(captions)
            ]
        else:
            out.append(
                single_turn(
                    f"{name}-{image_id}", image, prompt, captions[0], "caption", answers=tuple(captions), origin=origin
                )
            )
    return out


class KarpathyCaptions(FileSource):
    """``dataset_coco.json`` / ``dataset_flickr30k.json``: ``images[*]`` with ``split``
    (train/restval/val/test), ``filepath`` (COCO) + ``filename`` and ``sentences[*].raw``. All splits
    live in one file: set the same file for every split; ``restval`` counts as train."""

    prompt_fields = None  # the instruction, as it is

    metric = "caption"
    max_new_tokens = 64

    def __init__(self, *args, prompt: str = CAPTION_PROMPT, **kwargs):
        super().__init__(*args, prompt=prompt, **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        wanted = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}}[split]
        items = [
            (
                im.get("cocoid", im.get("imgid")),
                self.image_root / im.get("filepath", "") / im["filename"],
                [s["raw"].strip() for s in im["sentences"]],
            )
            for im in self.load_json(path)["images"]
            if im["split"] in wanted
        ]
        return _caption_records(self.name, items, self.prompt, split, str(path))


class CocoCaptions(FileSource):
    """COCO caption annotations (``captions_val2014.json``): ``images`` (id, file_name) and
    ``annotations`` (image_id, caption); one file per split."""

    prompt_fields = None  # the instruction, as it is

    metric = "caption"
    max_new_tokens = 64

    def __init__(self, *args, prompt: str = CAPTION_PROMPT, **kwargs):
        super().__init__(*args, prompt=prompt, **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        data = self.load_json(path)
        captions = defaultdict(list)
        for ann in data["annotations"]:
            captions[ann["image_id"]].append(ann["caption"].strip())
        items = [
            (im["id"], self.image_root / im["file_name"], captions[im["id"]])
            for im in data["images"]
            if captions[im["id"]]
        ]
        return _caption_records(self.name, items, self.prompt, split, str(path))
