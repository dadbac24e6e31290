"""Tool calls in the chat template's Qwen3 format: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

The model's text is parsed leniently (text before, between and after calls; several calls per turn; `arguments`
given as an object or as a JSON string of one, as OpenAI-style APIs do) and never raises: a block that cannot be
used becomes a `ToolCall` with `error` set, which the loop turns into a tool-result message the model sees.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# A block ends at its closing tag; without one, at the next opening tag or the end of the text (unterminated).
_BLOCK = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)(" + re.escape(TOOL_CALL_CLOSE) + r"|(?=" + re.escape(TOOL_CALL_OPEN) + r")|$)",
    re.DOTALL,
)


@dataclass
class ToolCall:
    """One `<tool_call>` block: `name` and `arguments` when usable, else `error` (why not) and the `raw` text."""

    name: str | None = None
    arguments: dict = field(default_factory=dict)
    raw: str = ""
    error: str | None = None


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split model output into (text outside the tool calls, stripped; the calls in order).

    A block without its closing tag (e.g. cut by the token budget) runs to the next `<tool_call>` or the end of the
    text and is reported as an error, as are invalid JSON, a non-object, a missing or non-string `name`, and non-object `arguments`.
    """
    calls: list[ToolCall] = []
    for match in _BLOCK.finditer(text):
        raw = match.group(1).strip()
        if not match.group(2):
            calls.append(ToolCall(raw=raw, error=f"unterminated {TOOL_CALL_OPEN}: no {TOOL_CALL_CLOSE} after it"))
            continue
        calls.append(_parse_block(raw))
    outside = _BLOCK.sub(" ", text)
    return " ".join(outside.split()) if outside.strip() else "", calls


def _parse_block(raw: str) -> ToolCall:
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as err:
        return ToolCall(raw=raw, error=f"tool call is not valid JSON ({err.msg}, character {err.pos})")
    if not isinstance(payload, dict):
        return ToolCall(raw=raw, error=f"tool call must be a JSON object, got {type(payload).__name__}")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(raw=raw, error='tool call needs a string "name"')
    arguments = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            return ToolCall(name=name, raw=raw, error=f'"arguments" of {name} is not valid JSON ({err.msg})')
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name=name, raw=raw, error=f'"arguments" of {name} must be an object, got {type(arguments).__name__}')
    return ToolCall(name=name, arguments=arguments, raw=raw)
