"""One training/evaluation example: an image, a conversation, a task and its reference answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mllmft.errors import DataError

TASKS = ("caption", "vqa", "multiple_choice")
ImageSource = Image.Image | str | Path | Callable[[], Image.Image]  # a callable loads it lazily



@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str


@dataclass(frozen=True)
class Record:
    id: str
    image: ImageSource
    turns: tuple[Turn, ...]
    task: str
    answers: tuple[str, ...]  # references for scoring the last assistant turn
    origin: str = "built-in"  # where the record came from, for error messages

    def where(self) -> str:
        return f"record {self.id!r} ({self.origin})"

    def validate(self) -> None:
        """Reject what would otherwise fail deep inside a processor, or train on nothing."""
        if self.task not in TASKS:
            raise DataError(f"{self.where()}: unknown task {self.task!r}; expected one of {TASKS}")
        if not self.turns:
            raise DataError(f"{self.where()}: the conversation is empty")
        roles = [t.role for t in self.turns]
        expected = ["user", "assistant"] * (len(roles) // 2 + 1)
        if roles != expected[: len(roles)] or roles[-1] != "assistant":
            raise DataError(
                f"{self.where()}: turns must alternate user/assistant and end with the assistant's "
                f"answer; got roles {roles}"
            )
        for i, turn in enumerate(self.turns):
            if not turn.text.strip():
                raise DataError(f"{self.where()}: turn {i} ({turn.role}) is empty")
        if not self.answers or not all(a.strip() for a in self.answers):
            raise DataError(f"{self.where()}: no reference answer")

    def check_image(self, thorough: bool) -> None:
        """At start-up: the image file exists (and, if thorough, its header decodes)."""
        if isinstance(self.image, Image.Image) or callable(self.image):
            return
        path = Path(self.image)
        if not path.is_file():
            raise DataError(f"{self.where()}: image file not found: {path}")
        if thorough:
            try:
                with Image.open(path) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                raise DataError(f"{self.where()}: cannot read image {path}: {err}") from err

    def load_image(self) -> Image.Image:
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        if callable(self.image):
            try:
                return self.image().convert("RGB")
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                raise DataError(f"{self.where()}: cannot decode its image: {err}") from err
        path = Path(self.image)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError as err:
            raise DataError(f"{self.where()}: image file not found: {path}") from err
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"{self.where()}: cannot read image {path}: {err}") from err

    @property
    def prompt_turns(self) -> tuple[Turn, ...]:
        """The conversation up to (not including) the final answer: what generation starts from."""
        return self.turns[:-1]


def single_turn(id: str, image: ImageSource, question: str, answer: str, task: str,
                answers: tuple[str, ...] | None = None, origin: str = "built-in") -> Record:
    return Record(id=id, image=image, turns=(Turn("user", question), Turn("assistant", answer)),
                  task=task, answers=answers or (answer,), origin=origin)
