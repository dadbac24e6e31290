"""Rule-based rewards for GSPO (SPEC §11): plain functions, replaceable by the user's own.

Each `*_reward` has TRL's reward-function signature: `f(completions, answer, **kwargs) -> list[float | None]`, one
value per completion; `completions` are strings or chat messages (`[{"role": "assistant", "content": ...}]`), and
`answer` is the dataset column (JSON text: `"B"` or `[start_s, end_s]`, see `data.load_jsonl`). A reward returns
None for rows of the other task, which TRL ignores when several reward functions are combined.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

THINK_ANSWER = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*(?P<answer>\S.*)$", re.DOTALL)
_CHOICE_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?\s*([A-Z])\b(?![a-z'])", re.IGNORECASE),  # "The answer is B", "Answer: (B)"
    # "B", "(B)", "B. text", "B) text", "B: text"; not "I think ..." (a bare letter needs punctuation or the end)
    re.compile(r"^\s*\(?([A-Z])(?:[.:)]|\s*$)"),
    re.compile(r"\(([A-Z])\)"),  # "... (B) ..."
)
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_INTERVAL = re.compile(rf"\[?\s*({_NUMBER})\s*(?:s|sec|seconds)?\s*(?:,|-|to|–)\s*({_NUMBER})\s*(?:s|sec|seconds)?\s*\]?")


def completion_text(completion: Any) -> str:
    """A TRL completion (string, or list of chat messages) -> its text (the last message's text parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else completion[-1]
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return ""


def decode_answer(answer: Any) -> Any:
    """The dataset's JSON-encoded answer -> "B" (str) or (start_s, end_s) floats; plain values pass through."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError:
            return answer.strip()
    if isinstance(answer, (list, tuple)):
        return tuple(float(x) for x in answer)
    return answer


def final_answer(text: str) -> str:
    """The text after `</think>` when the completion reasons first, else the whole text."""
    match = THINK_ANSWER.match(text)
    return match.group("answer") if match else text


def extract_choice(text: str) -> str | None:
    """The chosen option letter in a free-form answer: "B", "(B)", "B. text", "The answer is B" -> "B"; None when no
    letter option is found."""
    text = final_answer(text).strip()
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return None


def parse_interval(text: str) -> tuple[float, float] | None:
    """The first `[start, end]` (seconds; also "3.5 - 7", "3.5 to 7 s") in `text`; None when absent, non-finite or
    reversed (end < start)."""
    match = _INTERVAL.search(final_answer(text))
    if not match:
        return None
    start, end = float(match.group(1)), float(match.group(2))
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        return None
    return start, end


def temporal_iou(predicted: tuple[float, float] | None, target: tuple[float, float]) -> float:
    """Intersection over union of two [start, end] intervals in seconds, in [0, 1]; 0 for a missing, reversed or
    empty prediction (a zero-length prediction has no overlap measure)."""
    if predicted is None:
        return 0.0
    (ps, pe), (ts, te) = predicted, target
    if pe < ps or te < ts:
        return 0.0
    inter = max(0.0, min(pe, te) - max(ps, ts))
    union = max(pe, te) - min(ps, ts)
    return inter / union if union > 0 else 0.0


def _score(completions: list, answer: list, kind: type, score) -> list[float | None]:
    """score(text, target) for rows whose decoded answer is of `kind`, None for the others."""
    rewards = []
    for completion, target in zip(completions, answer):
        target = decode_answer(target)
        rewards.append(float(score(completion_text(completion), target)) if isinstance(target, kind) else None)
    return rewards


def multiple_choice_reward(completions: list, answer: list, **kwargs) -> list[float | None]:
    """1.0 when the completion's chosen letter equals the answer letter, else 0.0 (None for interval answers)."""
    return _score(completions, answer, str, lambda text, target: extract_choice(text) == target.strip("() ").upper())


def temporal_iou_reward(completions: list, answer: list, **kwargs) -> list[float | None]:
    """IoU in [0, 1] of the predicted `[start, end]` (seconds) with the answer interval (None for letter answers)."""
    return _score(completions, answer, tuple, lambda text, target: temporal_iou(parse_interval(text), target))


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the completion is `<think>reasoning</think>` followed by a non-empty answer, else 0.0."""
    return [float(THINK_ANSWER.match(completion_text(c)) is not None) for c in completions]


DEFAULT_REWARDS = (multiple_choice_reward, temporal_iou_reward, format_reward)
