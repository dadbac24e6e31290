"""Training data: JSONL files (one sample a line, videos by path) -> `datasets.Dataset` rows in our chat format.

Formats (SPEC §11; a video item takes the same keys as our processor: `fps`, `max_frames`, `max_pixels`,
`video_start`, `video_end` in seconds, ...):

- SFT: `{"messages": [...]}` in our chat format (loss on assistant tokens only), or LLaVA-style
  `{"video": path, "conversations": [{"from": "human", "value": "<video>\\n..."}, {"from": "gpt", "value": ...}]}`
  (`video_kwargs` on the row, e.g. `{"fps": 2, "max_frames": 64}`, go onto the video item).
- GSPO: `{"prompt": [...messages...], "answer": "B"}` (multiple choice) or `"answer": [start_s, end_s]` (temporal
  grounding, seconds).
- Distillation: `{"prompt": [...messages...]}`.

Relative video paths are resolved against the JSONL file's folder. Every message content becomes a list of parts
(Arrow needs one type per column); `clean_messages` removes the `None` values Arrow adds to parts that lack a key, so
the processor sees each part as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KINDS = ("sft", "gspo", "distill")
VIDEO_KEYS = ("video", "path", "url", "video_url")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _fail(path: Path, line: int, message: str):
    raise ValueError(f"{path}:{line}: {message}")


def _resolve(value: Any, base: Path) -> Any:
    """A relative local video path becomes absolute against the JSONL folder; URLs and absolute paths stay."""
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def _normalize_content(content: Any, base: Path, path: Path, line: int) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        _fail(path, line, f"message content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for part in content:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict):
            _fail(path, line, f"content parts must be objects, got {type(part).__name__}")
        part = dict(part)
        if part.get("type") == "video" or "video" in part:
            part.setdefault("type", "video")
            keys = [k for k in VIDEO_KEYS if k in part]
            if not keys:
                _fail(path, line, f"video part has none of the keys {VIDEO_KEYS}: {part}")
            for key in keys:
                part[key] = _resolve(part[key], base)
                if isinstance(part[key], str) and "://" not in part[key] and not Path(part[key]).is_file():
                    _fail(path, line, f"video file not found: {part[key]}")
        parts.append(part)
    return parts


def _normalize_messages(messages: Any, base: Path, path: Path, line: int, field: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        _fail(path, line, f"'{field}' must be a non-empty list of messages")
    out = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            _fail(path, line, f"each message in '{field}' needs 'role' and 'content', got {message!r}")
        out.append({"role": message["role"], "content": _normalize_content(message["content"], base, path, line)})
    return out


def llava_to_messages(row: dict, base: Path, path: Path | str = "<row>", line: int = 0) -> list[dict]:
    """LLaVA-style `{"video", "conversations": [{"from", "value"}]}` -> our messages; `<video>` marks where the clip
    goes (the start of the first human turn when absent)."""
    path = Path(path)
    video = {"type": "video", "video": row["video"], **(row.get("video_kwargs") or {})}
    messages, placed = [], False
    for turn in row["conversations"]:
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None:
            _fail(path, line, f"unknown LLaVA speaker {turn.get('from')!r} (expected one of {sorted(LLAVA_ROLES)})")
        text = turn.get("value", "")
        parts: list[Any] = []
        if role == "user" and not placed:
            before, marker, after = text.partition("<video>")
            if marker:
                parts += ([before] if before.strip() else []) + [video]
                text = after.lstrip("\n")
            else:
                parts.append(video)
            placed = True
        if text:
            parts.append(text)
        messages.append({"role": role, "content": parts})
    return _normalize_messages(messages, base, path, line, "conversations")


def parse_row(row: dict, kind: str, base: Path, path: Path | str = "<row>", line: int = 0) -> dict:
    """One JSON object -> one dataset row for `kind` ("sft", "gspo", "distill"). Raises ValueError naming the file
    and line when the row does not fit the format."""
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(row, dict):
        _fail(path, line, f"expected a JSON object, got {type(row).__name__}")
    if kind == "sft":
        if "messages" in row:
            messages = _normalize_messages(row["messages"], base, path, line, "messages")
        elif "conversations" in row and "video" in row:
            messages = llava_to_messages(row, base, path, line)
        else:
            _fail(path, line, "an SFT row needs 'messages', or LLaVA-style 'video' + 'conversations'")
        if not any(m["role"] == "assistant" for m in messages):
            _fail(path, line, "an SFT row needs at least one assistant message (the loss is on assistant tokens)")
        return {"messages": messages}
    if "prompt" not in row:
        _fail(path, line, f"a {kind} row needs 'prompt' (a list of messages)")
    out = {"prompt": _normalize_messages(row["prompt"], base, path, line, "prompt")}
    if kind == "gspo":
        answer = row.get("answer")
        if isinstance(answer, str) and answer.strip():
            out["answer"] = json.dumps(answer.strip())
        elif isinstance(answer, list) and len(answer) == 2 and all(isinstance(x, (int, float)) for x in answer):
            out["answer"] = json.dumps([float(answer[0]), float(answer[1])])
        else:
            _fail(path, line, f"'answer' must be a choice letter or [start_s, end_s], got {answer!r}")
    return out


def load_jsonl(path: str | Path, kind: str):
    """Read a JSONL training file into a `datasets.Dataset` with the columns the trainers expect.

    Returns rows `{"messages"}` (sft), `{"prompt", "answer"}` (gspo; `answer` JSON-encoded so a letter and an
    interval share one column, see `rewards.decode_answer`) or `{"prompt"}` (distill).

    Raises:
        FileNotFoundError: no such file. ValueError: an empty file, invalid JSON or a row that does not fit (names
        the file and line).
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                _fail(path, line, f"invalid JSON ({error.msg})")
            rows.append(parse_row(row, kind, path.parent, path, line))
    if not rows:
        raise ValueError(f"{path}: no samples")
    return Dataset.from_list(rows)


def clean_messages(messages: list[dict]) -> list[dict]:
    """Drop the `None` values Arrow fills into parts that lack a key (so a video part is not read as an image)."""
    cleaned = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{k: v for k, v in part.items() if v is not None} for part in content]
        cleaned.append({**{k: v for k, v in message.items() if v is not None}, "content": content})
    return cleaned
