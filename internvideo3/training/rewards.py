"""Rule-based rewards for GSPO (SPEC §11): plain functions, replaceable by the user's own.

Each `*_reward` has TRL's reward-function signature: `f(completions, answer, **kwargs) -> list[float | None]`, one
value per completion; `completions` are strings or chat messages (`[{"role": "assistant", "content": ...}]`), and
`answer` is the dataset column (JSON text: `"B"` or `[start_s, end_s]`, see `data.load_jsonl`). A reward returns
None for rows of the other task, which TRL ignores when several reward functions are combined.

The answer parsers (`extract_choice`, `parse_interval`, `final_answer`) live in `internvideo3.answers`, shared with
the agent, and refuse every answer that is not one documented format or that names several answers (a reward is
optimised: a lenient parser pays for listing every option).
"""

from __future__ import annotations

import json
from typing import Any

from ..answers import THINK_ANSWER, extract_choice, final_answer, parse_interval  # noqa: F401 - re-exported


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
