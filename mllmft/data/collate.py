"""Turn records into model inputs through the backbone's own processor and chat template.

Labels are -100 everywhere except the assistant's answer tokens (and the end-of-turn tokens the
template appends to them). The answer spans are found by rendering the conversation prefix that
ends where each answer starts (with the generation prompt) and where it ends, and tokenizing those
prefixes with the same processor; this works for any chat template whose rendering of a prefix is a
prefix of the whole rendering, and it is checked token by token rather than assumed.

Text is encoded as the chat template renders it, special tokens and all (the template writes its own,
``<|im_start|>`` and the like, as text), so a special token written out in a record's text would be
read as that token: ``check_texts`` refuses, at start-up, the records whose text holds one that would
break the encoding (see ``reserved_tokens``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from PIL import Image

from mllmft.data.batch_items import BatchItems
from mllmft.data.record import Record, Turn
from mllmft.errors import ConfigError, DataError

IGNORE_INDEX = -100


def _tokenizers(processor) -> list:
    """The tokenizers the collator encodes text with (InstructBLIP's Q-Former reads the instruction with
    one of its own)."""
    found = (getattr(processor, "tokenizer", None), getattr(processor, "qformer_tokenizer", None))
    return [tokenizer for tokenizer in found if tokenizer is not None]


@contextmanager
def processor_refusal(records: list[Record], sizes: list[tuple[tuple[int, int], ...]]) -> Iterator[None]:
    """A processor's ValueError about these records' inputs (Qwen2-VL refuses an image whose sides
    differ more than 200-fold) as a DataError naming them and their image sizes."""
    try:
        yield
    except DataError:
        raise
    except ValueError as err:
        described = "; ".join(
            f"{r.where()} (image{'s' * (len(s) > 1)} of {', '.join(f'{w}x{h}' for w, h in s)} pixels)"
            for r, s in zip(records[:3], sizes)
        )
        more = f" and {len(records) - 3} more" if len(records) > 3 else ""
        which = "it" if len(records) == 1 else "one of them"
        raise DataError(f"{described}{more}: the model's processor refuses {which}: {err}") from err


def to_messages(turns: tuple[Turn, ...], n_images: int) -> list[dict]:
    """HF chat messages; the images go first in the first user turn."""
    messages = []
    for i, turn in enumerate(turns):
        content = [{"type": "text", "text": turn.text}]
        if i == 0:
            content[:0] = [{"type": "image"}] * n_images
        messages.append({"role": turn.role, "content": content})
    return messages


class ConversationCollator:
    """Collate ``(index, record, images)`` items for training (``generate=False``) or generation."""

    # how many images one record may carry (None: any number); a family whose model reads fewer says
    # so in its collator, and a record with more is refused at start-up with the reason
    max_images: int | None = None
    max_images_why: str = ""

    def __init__(self, processor, max_length: int, generate: bool = False):
        if getattr(processor, "chat_template", None) is None:
            raise ConfigError("the backbone's processor has no chat template; set one in the model config")
        self.processor = processor
        self.max_length = max_length
        self.generate = generate
        # never supervised; BLIP-2's processor names its image token but not the token's id
        self.image_token_id = getattr(processor, "image_token_id", None)
        if self.image_token_id is None and getattr(processor, "image_token", None) is not None:
            self.image_token_id = processor.tokenizer.convert_tokens_to_ids(str(processor.image_token))

    @classmethod
    def check_image_counts(cls, records: list[Record]) -> None:
        """Refuse a record with more images than the family's model reads."""
        if cls.max_images is None:
            return
        for record in records:
            if len(record.images) > cls.max_images:
                raise DataError(
                    f"{record.where()}: {len(record.images)} images, but this model family reads at most "
                    f"{cls.max_images} per record ({cls.max_images_why}); split the record or use a family "
                    "that reads several (llava, qwen2_vl, smolvlm, ...)"
                )

    def reserved_tokens(self) -> list[str]:
        """The special tokens a record's text must not hold written out, longest first: the tokenizers'
        named ones (BOS, EOS, padding, unknown...), the processor's own (image and video tokens, their
        delimiters) and those the chat template writes (turn markers, end of turn). Another special
        token (Qwen's ``<|box_start|>`` for grounding) encodes as itself, which is what its writer means."""
        # BLIP-2's processor holds its image token as an AddedToken
        tokens = {getattr(v, "content", v) for k, v in vars(self.processor).items() if k.endswith("_token")}
        rendered = self.render((Turn("user", "q"), Turn("assistant", "a"), Turn("user", "q")), 1, True)
        for tokenizer in _tokenizers(self.processor):
            tokens.update(tokenizer.special_tokens_map.values())
            tokens.update(token for token in tokenizer.all_special_tokens if token in rendered)
        return sorted((t for t in tokens if isinstance(t, str) and t.strip()), key=len, reverse=True)

    def check_texts(self, records: list[Record]) -> None:
        """Refuse a record whose encoded text holds a reserved token written out (``</s>``, ``<pad>``, an
        image token): it would be read as that token, not as text, so an answer would end early or
        hold padding, or ask for an image the record does not have. (Encoding the text with special
        tokens split is no way out: the chat template writes its own special tokens as text.) In
        generation only the prompt is encoded; the last answer is a reference."""
        tokens = self.reserved_tokens()
        if not tokens:
            return
        pattern = re.compile("|".join(map(re.escape, tokens)))
        for record in records:
            for i, turn in enumerate(record.prompt_turns if self.generate else record.turns):
                found = pattern.search(turn.text)
                if found:
                    raise DataError(
                        f"{record.where()}: turn {i} ({turn.role}) holds {found.group()!r}, a special token of "
                        "the model's tokenizer, written as text; it would be read as that token (an end of "
                        "text, padding, an image), so remove or reword it"
                    )

    def render(self, turns: tuple[Turn, ...], n_images: int, add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            to_messages(turns, n_images), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, texts: list[str], images: list[list[Image.Image]], padding_side: str, **kwargs) -> dict:
        """``images``: each sample's list of images (SmolVLM requires the nesting, every other family
        accepts it)."""
        return self.processor(
            text=texts,
            images=[list(sample) for sample in images],
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            **kwargs,
        )

    def __call__(self, items: list[tuple[int, Record, list[Image.Image]]]) -> dict:
        indices, records, images = zip(*items)
        if self.generate:
            texts = [self.render(r.prompt_turns, len(r.images), add_generation_prompt=True) for r in records]
            with processor_refusal(list(records), _sizes(images)):
                inputs = dict(self.encode(texts, list(images), padding_side="left"))
            self.check_lengths(records, inputs["attention_mask"].sum(1).tolist(), "prompt")
            labels = None
        else:
            inputs, labels = self._encode_for_training(records, list(images))
        return {
            "model_inputs": inputs,
            "labels": labels,
            "index": torch.tensor(indices),
            "references": [r.answers for r in records],
            "options": [r.options for r in records],
            "ids": [r.id for r in records],
            "prompts": [r.prompt_turns[-1].text for r in records],
            "items": BatchItems(list(indices), list(records), list(images)),  # for objectives that sample
        }

    def _encode_for_training(self, records, images) -> tuple[dict, torch.Tensor]:
        full = [self.render(r.turns, len(r.images), add_generation_prompt=False) for r in records]
        with processor_refusal(list(records), _sizes(images)):
            inputs = dict(self.encode(full, images, padding_side="right"))
        lengths = inputs["attention_mask"].sum(1)
        self.check_lengths(records, lengths.tolist(), "conversation")

        # (sample, start-or-end prefix) for every assistant turn: its start is the prefix before it
        # plus the generation prompt, its end is the prefix through it (the whole text for the last).
        prefix_texts: list[str] = []
        owners: list[int] = []  # the sample each prefix belongs to
        spans: list[list[list[int]]] = [[] for _ in records]
        for s, record in enumerate(records):
            for j, turn in enumerate(record.turns):
                if turn.role != "assistant":
                    continue
                spans[s].append([len(prefix_texts), -1])
                prefix_texts.append(self.render(record.turns[:j], len(record.images), add_generation_prompt=True))
                owners.append(s)
                if j < len(record.turns) - 1:
                    spans[s][-1][1] = len(prefix_texts)
                    prefix_texts.append(
                        self.render(record.turns[: j + 1], len(record.images), add_generation_prompt=False)
                    )
                    owners.append(s)
        prefixes = self.encode(prefix_texts, [images[s] for s in owners], padding_side="right")
        prefix_lengths = prefixes["attention_mask"].sum(1).tolist()

        ids = inputs["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for s, record in enumerate(records):
            for start_ref, end_ref in spans[s]:
                start = prefix_lengths[start_ref]
                end = int(lengths[s]) if end_ref < 0 else prefix_lengths[end_ref]
                for ref, n in ((start_ref, start), (end_ref, end)):
                    if ref >= 0 and not torch.equal(prefixes["input_ids"][ref, :n], ids[s, :n]):
                        raise DataError(
                            f"{record.where()}: the chat template's tokens for a conversation prefix "
                            "are not a prefix of the whole conversation's tokens, so the answer span "
                            "cannot be located"
                        )
                if end <= start:
                    raise DataError(f"{record.where()}: an assistant answer encodes to no tokens")
                labels[s, start:end] = ids[s, start:end]
        if self.image_token_id is not None:
            labels[ids == self.image_token_id] = IGNORE_INDEX
        return inputs, labels

    def token_lengths(self, records: list[Record], sizes: list[tuple[tuple[int, int], ...]]) -> list[int]:
        """Each record's token count as ``__call__`` encodes it (image tokens included), without
        processing its images: the text is tokenised alone, and what the images add (their
        placeholders' expansion, which depends only on the images' sizes; LLaVA-OneVision gives an
        image fewer tokens when there are several) is measured once per list of sizes on blank images
        of those sizes. Equal to the collated count for every family (tested)."""
        texts = [self._length_text(r) for r in records]
        text_lengths = [len(ids) for ids in self.processor.tokenizer(texts)["input_ids"]]
        image_tokens: dict[tuple[tuple[int, int], ...], int] = {}
        for record, text, n, record_sizes in zip(records, texts, text_lengths, sizes):
            if record_sizes not in image_tokens:
                blanks = [Image.new("RGB", size) for size in record_sizes]
                with processor_refusal([record], [record_sizes]):  # at start-up: the images' sizes are all it needs
                    encoded = self.encode([text], [blanks], padding_side="right")
                image_tokens[record_sizes] = int(encoded["attention_mask"].sum()) - n
        return [n + image_tokens[record_sizes] for n, record_sizes in zip(text_lengths, sizes)]

    def _length_text(self, record: Record) -> str:
        if self.generate:
            return self.render(record.prompt_turns, len(record.images), add_generation_prompt=True)
        return self.render(record.turns, len(record.images), add_generation_prompt=False)

    def check_lengths(self, records, lengths: list[int], what: str) -> None:
        for record, n in zip(records, lengths):
            if n > self.max_length:
                raise DataError(
                    f"{record.where()}: the {what} is {n} tokens (image tokens included), more than "
                    f"data.max_length={self.max_length}; truncating would cut the image or the answer. "
                    "Raise data.max_length or shorten the record."
                )


def _sizes(images) -> list[tuple[tuple[int, int], ...]]:
    return [tuple(image.size for image in sample) for sample in images]
