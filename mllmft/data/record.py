"""One training/evaluation example: its images, a conversation, a task and its reference answers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mllmft.data.images import MAX_IMAGE_PIXELS, UNREADABLE, check_pixels, decode_file, to_rgb, verify_header
from mllmft.errors import DataError

TASKS = ("caption", "vqa", "multiple_choice")
IMAGE_CHECKS = ("decode", "header", "exists", "none")  # data.image_check, most thorough first
ImageSource = Image.Image | str | Path | Callable[[], Image.Image]  # a callable loads it lazily


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: str  # "user" or "assistant"
    text: str


@dataclass(frozen=True)
class Record:
    """One training or test example: one image or several, the conversation (user and assistant turns),
    its task and the references that score the last answer. The images go, in order, before the text of
    the first user turn (how LLaVA places its image); a family whose model reads fewer refuses the
    record at start-up (``ConversationCollator.max_images``)."""

    id: str
    images: tuple[ImageSource, ...]
    turns: tuple[Turn, ...]
    task: str
    answers: tuple[str, ...]  # references for scoring the last assistant turn
    origin: str = "built-in"  # where the record came from, for error messages
    options: tuple[str, ...] = ()  # multiple choice: the options' texts in letter order, when known
    # the folder a path read from a data file must stay in (None: the path is the reader's own)
    image_root: Path | None = None

    def where(self) -> str:
        return f"record {self.id!r} ({self.origin})"

    def validate(self) -> None:
        """Reject what would otherwise fail deep inside a processor, or train on nothing."""
        if not isinstance(self.id, str):
            raise DataError(f"{self.where()}: the id must be a string, got {type(self.id).__name__}")
        if self.task not in TASKS:
            raise DataError(f"{self.where()}: unknown task {self.task!r}; expected one of {TASKS}")
        if not isinstance(self.images, tuple) or not self.images:
            raise DataError(f"{self.where()}: no image (text-only records are not supported)")
        for k, image in enumerate(self.images):
            if not isinstance(image, (Image.Image, str, Path)) and not callable(image):
                raise DataError(f"{self.where_image(k)}: the image must be a file path, got {type(image).__name__}")
        if not self.turns:
            raise DataError(f"{self.where()}: the conversation is empty")
        for i, turn in enumerate(self.turns):
            if not isinstance(turn.text, str):
                raise DataError(f"{self.where()}: turn {i} must be text, got {type(turn.text).__name__}")
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
        _check_strings(self, "answers", self.answers)
        if not self.answers or not all(a.strip() for a in self.answers):
            raise DataError(f"{self.where()}: no reference answer")
        _check_strings(self, "options", self.options)
        if self.task == "multiple_choice" and self.options:
            letter = self.answers[0].strip().upper()
            if len(letter) != 1 or not 0 <= ord(letter) - ord("A") < len(self.options):
                raise DataError(
                    f"{self.where()}: the answer {self.answers[0]!r} is not the letter of one of "
                    f"its {len(self.options)} options"
                )

    def where_image(self, k: int) -> str:
        """The record, and which of its images when it has several (for error messages)."""
        return self.where() if len(self.images) == 1 else f"{self.where()}, image {k + 1} of {len(self.images)}"

    def path_outside_root(self, real_dirs: dict[str, str] | None = None) -> Path | None:
        """The first image path read from a data file that leaves its root (``../x.png``, an absolute
        path, a symbolic link to a file elsewhere), or None. Both are resolved first: the path's text
        alone would let a link inside the root lead out of it. ``real_dirs``: see ``real_path``."""
        if self.image_root is None:
            return None
        root = real_path(self.image_root, real_dirs)
        for image in self.images:
            if isinstance(image, (str, Path)) and os.path.commonpath([root, real_path(image, real_dirs)]) != root:
                return Path(image)
        return None

    def check_files(self, check: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        """The cheap start-up checks of the image files: ``exists``, or ``header`` (opens, under the
        pixel cap, structure verifies). Decoding (``decode``) is ``decode_images``."""
        for k, image in enumerate(self.images):
            if not isinstance(image, (str, Path)):
                continue
            path = Path(image)
            if check == "exists" and not path.is_file():
                raise DataError(f"{self.where_image(k)}: image file not found: {path}")
            if check == "header":
                verify_header(path, self.where_image(k), max_pixels)

    def image_sizes(self, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[tuple[int, int], ...]:
        """(width, height) of each image, from the file's header where there is a file."""
        return tuple(
            verify_header(Path(image), self.where_image(k), max_pixels)
            if isinstance(image, (str, Path))
            else self._decode(k, max_pixels)[0].size
            for k, image in enumerate(self.images)
        )

    def decode_images(self, max_pixels: int = MAX_IMAGE_PIXELS) -> list[tuple[Image.Image, str | None]]:
        """(RGB picture, what decoding had to do to it) per image; any failure is a DataError naming the
        record (and the image, when there are several)."""
        return [self._decode(k, max_pixels) for k in range(len(self.images))]

    def load_images(self, max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
        return [image for image, _ in self.decode_images(max_pixels)]

    def _decode(self, k: int, max_pixels: int) -> tuple[Image.Image, str | None]:
        source, where = self.images[k], self.where_image(k)
        if isinstance(source, (str, Path)):
            return decode_file(Path(source), where, max_pixels)
        try:
            image = source if isinstance(source, Image.Image) else source()
            check_pixels(image, where, max_pixels)
            return to_rgb(image, where)
        except DataError:
            raise
        except UNREADABLE as err:
            raise DataError(f"{where}: cannot decode its image: {err}") from err

    @property
    def prompt_turns(self) -> tuple[Turn, ...]:
        """The conversation up to (not including) the final answer: what generation starts from."""
        return self.turns[:-1]


def real_path(path: str | Path, real_dirs: dict[str, str] | None = None) -> str:
    """``os.path.realpath``; with ``real_dirs`` (folder -> its real path, filled as it goes) each folder
    is resolved once: realpath costs a system call per component, and a data set keeps its many
    images in a few folders. Only the file itself is then looked at, for being a link."""
    path = os.path.abspath(path)
    if real_dirs is None or os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    return os.path.join(real_dirs[folder], name)


def _check_strings(record: Record, field: str, values) -> None:
    if not isinstance(values, tuple):
        raise DataError(f"{record.where()}: {field} must be a list of strings, got {type(values).__name__}")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{record.where()}: {field}[{i}] must be a string, got {value!r} ({type(value).__name__})")


def single_turn(
    id: str,
    image: ImageSource,
    question: str,
    answer: str,
    task: str,
    answers: tuple[str, ...] | None = None,
    origin: str = "built-in",
    options: tuple[str, ...] = (),
    image_root: Path | None = None,
) -> Record:
    return Record(
        id=id,
        images=(image,),
        turns=(Turn("user", question), Turn("assistant", answer)),
        task=task,
        answers=answers or (answer,),
        origin=origin,
        options=options,
        image_root=image_root,
    )
