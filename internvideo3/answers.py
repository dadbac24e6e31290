"""Parsers of a model's final answer: the option letter of a multiple-choice question and a `[start_s, end_s]`
interval. Shared by the GSPO rewards (`internvideo3.training.rewards`, SPEC §11) and the agent's `ground` tool, so
the two read a model's answer the same way (one regex each, here).

Both parsers are strict on purpose: a reward is optimised, so every text that is not one of the documented formats,
or that names more than one answer, parses to None (scores 0) rather than to a lucky guess.
"""

from __future__ import annotations

import math
import re

THINK_ANSWER = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*(?P<answer>\S.*)$", re.DOTALL)
_THINK_ONLY = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*$", re.DOTALL)

# An option letter: an upper-case letter standing alone (not part of a word such as "Based" or "I'm"), or any letter
# in parentheses ("(B)", "(c)"). A bare lower-case letter is never an option: "a" and "i" are words.
_LETTER = r"(?:\((?P<paren>[A-Za-z])\)|(?<![A-Za-z'’])(?P<bare>[A-Z])(?![A-Za-z'’]))"
# The whole answer is one of: "B", "(B)", "B." / "B:" / "B)" optionally followed by text ("B. a dog"), "(B) a dog".
_LEADING_CHOICE = re.compile(
    r"^\s*(?:\((?P<paren>[A-Za-z])\)(?:[.:]?(?:\s+.*)?)?|(?P<bare>[A-Z])(?:[.:)](?:\s+.*)?)?)\s*$", re.DOTALL
)
# "The answer is B", "Answer: (B)", "the correct answer is option C." anywhere in the answer; the letter must end
# there (end of text, punctuation or a space), so "The answer is a dog" and "answer: Based on" name no option.
_ANSWER_PHRASE = re.compile(
    r"(?i:\b(?:final\s+|correct\s+)?answer\s*(?:is\s*:?|:|-)\s*(?:option\s+)?)" + _LETTER + r"(?=$|[\s.,:;!?)])"
)
# Places where a text names an option besides the chosen one: "(C)", "C." / "C)" at a word's start, "A, B" / "A or
# B" lists, and a letter closing the text ("... I think C"). Used only to refuse answers that name several letters.
_OTHER_OPTION = re.compile(
    r"\((?P<p>[A-Za-z])\)"
    r"|(?<![A-Za-z'’])(?P<d>[A-Z])[.)](?=\s|$)"
    r"|(?<![A-Za-z'’])(?P<l1>[A-Z])\s*(?:,|/|&|\bor\b|\band\b)\s*\(?(?P<l2>[A-Z])(?![A-Za-z'’])"
    r"|(?<![A-Za-z'’])(?P<e>[A-Z])\s*[.!)]?\s*$"
)

_NUMBER = r"(?<![\w.])([-+]?\d+(?:\.\d+)?)(?!\.?\d)"
_UNIT = r"(?:\s*(?:seconds?|secs?|s)(?![A-Za-z]))?"
_SEPARATOR = r"\s*(?:,|-|–|to)\s*"
# "[2.5, 7]", "2.5 - 7 s", "from 2.5 to 7 seconds": two numbers joined by one separator, not part of a longer list.
INTERVAL = re.compile(
    r"\[?\s*" + _NUMBER + _UNIT + _SEPARATOR + _NUMBER + _UNIT + r"\s*\]?(?!" + _SEPARATOR + r"[-+]?\d)"
)
_LIST_BEFORE = re.compile(r"\d" + _UNIT + _SEPARATOR + r"\[?\s*$")


def final_answer(text: str) -> str:
    """The part of a completion that answers: the text after `</think>`; the reasoning itself when nothing follows
    it (`<think>… The answer is B</think>`); the whole text when there is no `<think>` block."""
    match = THINK_ANSWER.match(text)
    if match:
        return match.group("answer")
    match = _THINK_ONLY.match(text)
    return match.group("think") if match else text


def _letter(match: re.Match) -> str:
    return (match.group("paren") or match.group("bare")).upper()


def extract_choice(text: str) -> str | None:
    """The one option letter a free-form answer chooses, upper-case, else None.

    Accepted (in the text after `</think>`, or inside it when nothing follows): "B", "(B)", "(b)", "B.", "B)",
    "B: text", "B. text", "(B) text", "Answer: B", "The answer is (B).", "... so the correct answer is option B".
    None for everything else, in particular: a lower-case letter outside parentheses (the articles "a", "i"), a
    letter inside a word, "I think ..." / "A dog ...", and any answer that names two or more different letters
    ("A or B", "A, B, C, D", "(A) (B)", "The answer is B, not C") — a reward must not pay for listing options.
    """
    answer = final_answer(text).strip()
    if not answer:
        return None
    chosen = {_letter(m) for m in _ANSWER_PHRASE.finditer(answer)}
    if not chosen:
        match = _LEADING_CHOICE.match(answer)
        if match:
            chosen = {_letter(match)}
    if len(chosen) != 1:
        return None
    named = {g.upper() for m in _OTHER_OPTION.finditer(answer) for g in m.groups() if g}
    return chosen.pop() if named <= chosen else None


def find_interval(text: str) -> tuple[float, float] | None:
    """The one `[a, b]` pair of numbers (seconds) in `text` ("[2.5, 7]", "2.5 - 7 s", "2.5 to 7 seconds"), as given
    (not sorted); None when there is none, when the text gives two or more different pairs, or when the numbers are
    part of a longer list ("1, 2, 3")."""
    pairs = set()
    for match in INTERVAL.finditer(text):
        if _LIST_BEFORE.search(text, 0, match.start()):  # the tail of a longer list: "1, 2, 3"
            return None
        pairs.add((float(match.group(1)), float(match.group(2))))
    if len(pairs) != 1:
        return None
    (pair,) = pairs
    return pair if all(math.isfinite(v) for v in pair) else None


def parse_interval(text: str) -> tuple[float, float] | None:
    """The interval (start_s, end_s) a completion answers with (see `find_interval`; read after `</think>` as
    `final_answer` says); None when absent, ambiguous, non-finite or reversed (end < start)."""
    pair = find_interval(final_answer(text))
    if pair is None or pair[1] < pair[0]:
        return None
    return pair


__all__ = ["INTERVAL", "THINK_ANSWER", "extract_choice", "final_answer", "find_interval", "parse_interval"]
