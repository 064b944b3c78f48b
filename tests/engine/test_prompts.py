import math

import pytest

from vqclip.errors import PromptError
from vqclip.prompts import CLIP_TEXT_TOKENS, check_token_length, format_prompt, parse_prompt, scoring_text

INF = -math.inf


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red fox", [("a red fox", 1.0, INF)]),
        ("a red fox:2", [("a red fox", 2.0, INF)]),
        ("a red fox:1 | a watercolour:0.5 | blurry:-0.3", [("a red fox", 1, INF), ("a watercolour", 0.5, INF), ("blurry", -0.3, INF)]),
        ("fox:1:-0.5", [("fox", 1.0, -0.5)]),
        ("  spaced out  :  3 ", [("spaced out", 3.0, INF)]),
        ("ratio 16\\:9 poster", [("ratio 16:9 poster", 1.0, INF)]),
        ("time: noon", [("time: noon", 1.0, INF)]),
        ("a\\|b", [("a|b", 1.0, INF)]),
        ("1e-1 stars:1e-1", [("1e-1 stars", 0.1, INF)]),
        ("city:at:night:2", [("city:at:night", 2.0, INF)]),
    ],
)
def test_parses_weights_stops_and_escapes(prompt, expected):
    parts = parse_prompt(prompt)
    assert [(p.text, p.weight, p.stop) for p in parts] == expected
    assert parse_prompt(format_prompt(parts)) == parts


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a fox |", "part 2"),
        ("| a fox", "part 1"),
        ("a fox || a cat", "part 2"),
        (":1", "no text"),
        ("fox:0", "weight 0"),
        ("fox:inf", "finite"),
        ("fox:nan", "finite"),
        ("fox:1:nan", "stop nan"),
    ],
)
def test_rejects_bad_prompts_with_a_clear_message(prompt, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(prompt)


def test_scoring_text_keeps_positive_parts_strongest_first():
    assert scoring_text(parse_prompt("a fox:0.5 | blurry:-1 | a forest:2")) == "a forest, a fox"


def test_prompts_longer_than_clip_reads_are_rejected():
    check_token_length(parse_prompt("word " * CLIP_TEXT_TOKENS))
    with pytest.raises(PromptError, match="part 2 is 76 CLIP tokens"):
        check_token_length(parse_prompt("short | " + "word " * (CLIP_TEXT_TOKENS + 1)))


@pytest.mark.parametrize(
    ("char", "label"),
    [
        ("\x00", "U+0000"),
        ("\x01", "U+0001"),
        ("\r", "U+000D"),
        ("\x1b", "U+001B"),
        ("\x7f", "U+007F"),
        ("\x85", "U+0085"),
        ("\x9f", "U+009F"),
        ("\u202a", "U+202A (LEFT-TO-RIGHT EMBEDDING)"),
        ("\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("\u2066", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("\u2069", "U+2069 (POP DIRECTIONAL ISOLATE)"),
    ],
)
def test_control_characters_are_refused_with_their_position(char, label):
    with pytest.raises(PromptError) as caught:
        parse_prompt(f"a fo{char}x:1 | blurry:-0.5")
    assert str(caught.value) == f"character 5 is {label}, a control character; remove it"


def test_tabs_newlines_and_other_scripts_are_text():
    parts = ["a fox\tin the snow", "雪の中の狐", "ثعلب في الثلج", "👩\u200d🎨"]  # U+200D: the emoji joiner
    assert [part.text for part in parse_prompt(parts[0] + "\n| " + " | ".join(parts[1:]))] == parts
