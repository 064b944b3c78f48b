"""Weighted prompt syntax: ``"a red fox:1 | a watercolour:0.5 | blurry:-0.3"``.

Parts are separated by ``|``. Each part is ``text[:weight[:stop]]``; the weight defaults to 1 and a
negative weight pushes the image away from the text. ``stop`` caps how far that part's loss is
driven down (the loss of the reference implementations). A literal ``|`` or ``:`` in the text is
written ``\\|`` or ``\\:``; a trailing ``:word`` that is not a number stays part of the text.
A prompt may also be a schedule, the reference's story mode: prompts separated by ``^`` take turns,
each guiding for `change_every` steps (``"a forest ^ a city"``); a literal ``^`` is written ``\\^``.
Control characters other than tab and newline, and the bidirectional embedding, override and isolate
characters, are refused: they are invisible where prompts are read and can make one text look like another.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from vqclip.errors import PromptError

CLIP_TEXT_TOKENS = 75
"""Tokens of text CLIP reads: its 77-token context less the start and end markers."""
MAX_WEIGHT = 1000.0
"""The largest weight of a prompt, in size: only weights' ratios matter to the optimiser, and far larger ones overflow the loss."""

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_UNESCAPED_CARET = re.compile(r"(?<!\\)\^")
_ALLOWED_CONTROLS = frozenset("\t\n")
# The "Trojan Source" characters (CVE-2021-42574): they reorder how the text around them is displayed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class WeightedPrompt:
    """One part of a prompt: the text, its weight and its stop value."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf

    def __str__(self) -> str:
        text = self.text.replace("|", r"\|").replace(":", r"\:").replace("^", r"\^")
        if self.stop != -math.inf:
            return f"{text}:{self.weight:g}:{self.stop:g}"
        return f"{text}:{self.weight:g}"


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number


def _split_unescaped_colon(part: str) -> list[str]:
    pieces, current, i = [], [], 0
    while i < len(part):
        if part[i] == "\\" and i + 1 < len(part) and part[i + 1] in ":|^\\":
            current.append(part[i : i + 2])
            i += 2
            continue
        if part[i] == ":":
            pieces.append("".join(current))
            current = []
        else:
            current.append(part[i])
        i += 1
    pieces.append("".join(current))
    return pieces


def _unescape(text: str) -> str:
    return re.sub(r"\\([:|^\\])", r"\1", text)


def parse_part(part: str, position: int = 1) -> WeightedPrompt:
    """Parse one ``text[:weight[:stop]]`` part; `position` (1-based) only labels errors."""
    pieces = _split_unescaped_colon(part)
    numbers: list[float] = []
    while len(pieces) > 1 and len(numbers) < 2:
        value = _number(pieces[-1].strip())
        if value is None:
            break
        numbers.insert(0, value)
        pieces.pop()
    text = _unescape(":".join(pieces)).strip()
    if not text:
        raise PromptError(f"prompt part {position} ({part.strip()!r}) has no text; write it as 'text:weight'")
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else -math.inf
    if not math.isfinite(weight):
        raise PromptError(f"prompt part {position} ({text!r}) has weight {weight}; use a finite number such as 1 or -0.5")
    if abs(weight) > MAX_WEIGHT:
        raise PromptError(f"prompt part {position} ({text!r}) has weight {weight:g}; use a number from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
    if weight == 0:
        raise PromptError(f"prompt part {position} ({text!r}) has weight 0, which does nothing; remove the part or give it a weight")
    if math.isnan(stop):
        raise PromptError(f"prompt part {position} ({text!r}) has stop nan; use a number or leave it out")
    return WeightedPrompt(text, weight, stop)


def check_characters(prompt: str) -> None:
    """Raise PromptError at the first control or bidirectional-override character, giving its 1-based position."""
    for position, char in enumerate(prompt, start=1):
        if char in _BIDI_CONTROLS or (unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROLS):
            name = unicodedata.name(char, None)  # C0 and C1 controls have no Unicode name
            label = f"U+{ord(char):04X}" + (f" ({name})" if name else "")
            raise PromptError(f"character {position} is {label}, a control character; remove it")


def parse_prompt(prompt: str) -> list[WeightedPrompt]:
    """Parse a ``|``-separated weighted prompt into its parts; empty parts and control characters are errors."""
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty; write some text, e.g. 'a red fox:1 | blurry:-0.5'")
    check_characters(prompt)
    parts = _UNESCAPED_PIPE.split(prompt)
    return [parse_part(part, position) for position, part in enumerate(parts, start=1)]


def parse_schedule(prompt: str, check_tokens: bool = False) -> list[list[WeightedPrompt]]:
    """Parse a ``^``-separated schedule of weighted prompts (one prompt is a schedule of one), checking token lengths if asked."""
    check_characters(prompt)
    stages = _UNESCAPED_CARET.split(prompt)
    parsed = []
    for position, stage in enumerate(stages, start=1):
        try:
            parsed.append(parse_prompt(stage))
            if check_tokens:
                check_token_length(parsed[-1])
        except PromptError as exc:
            if len(stages) == 1:
                raise
            raise PromptError(f"scheduled prompt {position} of {len(stages)}: {exc}") from None
    return parsed


def format_schedule(stages: list[list[WeightedPrompt]]) -> str:
    """The canonical string of a parsed schedule (a single prompt formats as `format_prompt` does)."""
    return " ^ ".join(format_prompt(parts) for parts in stages)


def stage_at(step: int, change_every: int, stages: int) -> int:
    """Which prompt of a schedule of `stages` guides 0-based `step`: the next every `change_every` steps, round again after the last."""
    return step // change_every % stages if change_every else 0


def final_prompt(prompt: str, steps: int, change_every: int) -> list[WeightedPrompt]:
    """The parts of the prompt (of a schedule) that guides the last of `steps`: the one the final image shows."""
    stages = parse_schedule(prompt)
    return stages[stage_at(steps - 1, change_every, len(stages))]


def format_prompt(parts: list[WeightedPrompt]) -> str:
    """The canonical string of parsed parts (parses back to the same parts)."""
    return " | ".join(str(part) for part in parts)


def scoring_text(parts: list[WeightedPrompt]) -> str:
    """The text an image is scored against: its positive parts, strongest first."""
    positive = sorted((p for p in parts if p.weight > 0), key=lambda p: -p.weight)
    return ", ".join(p.text for p in positive) if positive else parts[0].text


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def token_count(text: str) -> int:
    """How many CLIP BPE tokens `text` takes (without start and end markers)."""
    return len(_tokenizer().encode(text))


def check_token_length(parts: list[WeightedPrompt], limit: int = CLIP_TEXT_TOKENS) -> None:
    """Raise PromptError when a part is longer than CLIP reads (it would be silently truncated)."""
    for position, part in enumerate(parts, start=1):
        # CLIP's BPE makes at most one token of each character of an ASCII text without HTML entities (its
        # cleaning only drops characters from such text): short ones need no tokenizer, whose module imports torch.
        if len(part.text) <= limit and part.text.isascii() and "&" not in part.text:
            continue
        count = token_count(part.text)
        if count > limit:
            raise PromptError(
                f"prompt part {position} is {count} CLIP tokens long, more than the {limit} CLIP reads; "
                f"shorten it or split it into weighted parts with '|'"
            )
