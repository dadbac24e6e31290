"""The answer parsers the GSPO rewards and the agent share (internvideo3/answers.py): adversarial tables.

A reward is optimised, so each table pairs the documented formats (which must parse) with the texts a policy could
learn to emit to collect reward without choosing (which must parse to None and score 0).
"""

from __future__ import annotations

import pytest

from internvideo3.answers import extract_choice, find_interval, parse_interval

CHOICES = [
    # documented formats -> the letter
    ("B", "B"),
    ("(B)", "B"),
    ("(b)", "B"),
    ("B.", "B"),
    ("B)", "B"),
    ("B: a dog", "B"),
    ("B. a dog", "B"),
    ("B) a dog", "B"),
    ("(B) a dog", "B"),
    ("Answer: B", "B"),
    ("ANSWER: B", "B"),
    ("answer: (c)", "C"),
    ("The answer is B", "B"),
    ("The answer is (B).", "B"),
    ("the answer is (c).", "C"),
    ("Based on the video, the correct answer is option D.", "D"),
    ("A dog jumps over the bar. Answer: B", "B"),
    ("<think>dogs bark</think> B. dog", "B"),
    ("<think>the dog jumps, so not A</think>\nThe answer is C", "C"),
    ("<think>The clip shows a dog. The answer is C</think>", "C"),
    ("  D  ", "D"),
    # gaming attempts and non-answers -> None
    ("The answer is a dog (C).", None),  # the article "a" is no option, and two letters are named
    ("The answer is a cat, option (C)", None),
    ("I think it is a dog", None),  # the pronoun "I"
    ("A dog jumps.", None),  # the article "A"
    ("answer: b", None),  # a bare lower-case letter is a word, not an option
    ("a", None),
    ("A or B", None),
    ("B or C", None),
    ("A, B, C, D", None),  # every option
    ("A B C D", None),
    ("(A) (B) (C) (D)", None),
    ("Answer: A B C D", None),
    ("The answer is A, B, C or D", None),
    ("The answer is B, not C", None),
    ("The answer is B or C", None),
    ("The answer is B. The answer is C.", None),
    ("The answer is I think C", None),
    ("B. (C) is also possible", None),
    ("ABCD", None),  # letters inside a word
    ("Bee", None),
    ("Based on the video", None),
    ("It's clearly the best option", None),
    ("<think>A or B</think>", None),
    ("<think>it is B</think> A or B", None),  # the answer after </think> decides, not the reasoning
    ("", None),
    ("   ", None),
]


@pytest.mark.parametrize("text, letter", CHOICES)
def test_extract_choice_table(text, letter):
    assert extract_choice(text) == letter


def test_multiple_choice_reward_cannot_be_gamed():
    pytest.importorskip("trl")
    from internvideo3.training.rewards import multiple_choice_reward

    gamed = ["The answer is a cat, option (C)", "A, B, C, D", "(A) (B) (C) (D)", "The answer is A or B"]
    assert multiple_choice_reward(gamed, ['"A"'] * len(gamed)) == [0.0] * len(gamed)
    assert multiple_choice_reward(["<think>dog</think> The answer is (A)."], ['"A"']) == [1.0]


INTERVALS = [
    # documented formats -> (start_s, end_s)
    ("[2.5, 7]", (2.5, 7.0)),
    ("[2.5,7.0]", (2.5, 7.0)),
    ("2.5 - 7", (2.5, 7.0)),
    ("2.5-7 s", (2.5, 7.0)),
    ("3.5 to 7s", (3.5, 7.0)),
    ("3.5s - 7.25 sec", (3.5, 7.25)),
    ("from 2.5 to 7 seconds", (2.5, 7.0)),
    ("2.5 – 7", (2.5, 7.0)),
    ("The dog appears at [2.5, 7] seconds", (2.5, 7.0)),
    ("It happens at [2.5, 4] seconds.", (2.5, 4.0)),
    ("[1, 3] and again [1, 3]", (1.0, 3.0)),  # the same interval twice is one answer
    ("<think>maybe [0, 1]</think>[2, 4]", (2.0, 4.0)),  # the answer after </think> decides
    ("<think>it is [2, 4]</think>", (2.0, 4.0)),
    ("[0, 0]", (0.0, 0.0)),
    ("+1 to 2", (1.0, 2.0)),
    # gaming attempts, ambiguity and non-answers -> None
    ("[3, 1]", None),  # reversed
    ("[1, 3] or [5, 7]", None),  # two answers
    ("[1, 3], [5, 7]", None),
    ("[0, 1] [1, 2] [2, 3]", None),
    ("1, 2, 3, 4", None),  # a list of numbers
    ("0-1-2-3", None),
    ("2024-05-06", None),  # a date
    ("mp4-5", None),  # digits inside a word
    ("version 1.2.3-4", None),
    ("[1.5.2, 3]", None),
    ("between 2 and 4", None),
    ("from 2 until later", None),
    ("[nan, inf]", None),
    ("The answer is B", None),
    ("at 5 seconds", None),
    ("", None),
]


@pytest.mark.parametrize("text, interval", INTERVALS)
def test_parse_interval_table(text, interval):
    assert parse_interval(text) == interval


def test_find_interval_keeps_order_for_the_agent():
    """The agent's `ground` sorts a reversed pair itself; the reward refuses it (same regex, one place)."""
    assert find_interval("[7, 2.5]") == (7.0, 2.5)
    assert parse_interval("[7, 2.5]") is None
    assert find_interval("[1, 3] or [5, 7]") is None
