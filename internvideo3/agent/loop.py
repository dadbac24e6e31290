"""The long-video agent loop (SPEC §12, Multimodal Contextual Reasoning): one shared, growing conversation.

A coarse view of the whole video comes first; the model then calls tools in the chat template's
`<tool_call>{json}</tool_call>` format; each result (text, or a new video item the vision tower encodes at that point)
is appended to the same conversation; the loop stops at a final answer (a turn without tool calls), the step budget or
the token budget. The conversation lives on one `InternVideo3LatentCache`: each turn prefills only the new suffix
(`LatentCacheChat`), which the latent cache (half of a GQA cache per token) makes cheap to keep.

Why not smolagents' `ToolCallingAgent`: its messages carry text and images only (tool outputs are stringified, images
are base64-encoded and appended as separate frames), so a re-inspected clip cannot enter the context as a video item
with its timestamps and temporal patches; it renders tool calls and results in its own "Calling tools:" /
"Observation:" text instead of the chat template's `<tool_call>` / `<tool_response>` blocks the model is trained on;
and its model interface returns a message per call with no hook to keep a cache between calls. The loop here is small
and keeps those three things.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .chat import ContextBudgetError
from .parsing import parse_tool_calls
from .tools import ClipSettings, ToolRegistry, ToolResult, VideoTools

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions about a long video by gathering evidence step by step. The first message holds a coarse "
    "overview of the whole video; every timestamp is in seconds from its start. Use the tools to find candidate "
    "segments (segment, ground), look at them again denser and sharper (inspect_clip), listen (transcribe), "
    "summarize, keep notes (note, search_notes) and check your conclusions (verify). When you have enough evidence, "
    "reply with the final answer, citing timestamps, and no tool call."
)
FINAL_STEP_PROMPT = "This is the last step: give your final answer now, citing timestamps, without calling a tool."
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
# Typed into text, these would be read back as image/video placeholders without pixels: the prompt could not be built.
_VISION_MARKERS = re.compile(r"<\|(?:vision_start|vision_end|video_pad|image_pad)\|>")


@dataclass
class AgentBudget:
    """Limits that guarantee the loop ends.

    max_steps: model turns (the last one is asked for the answer). max_new_tokens: tokens generated per turn.
    max_context_tokens: prompt + generated tokens of one turn (the conversation stops growing past it).
    max_tool_calls: tool calls run per turn (further ones get an error result). max_tool_chars: characters of one
    tool result kept in the context.

    Raises:
        ValueError: a limit below 1 (names it).
    """

    max_steps: int = 8
    max_new_tokens: int = 256
    max_context_tokens: int = 65536
    max_tool_calls: int = 4
    max_tool_chars: int = 2000

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AgentBudget.{name} must be a positive integer, got {value!r}")


@dataclass
class AgentResult:
    """Outcome of `VideoAgent.run`.

    answer: final text (tool calls and `<think>` removed). steps: model turns made. stop_reason: "answer",
    "step budget" or "token budget". prefill_tokens_saved: prompt tokens taken from caches instead of prefilled, main
    and side conversations (tokens); prefilled_tokens: prompt tokens prefilled. cache_bytes / cache_tokens: the main
    conversation's latent cache at the end (bytes, tokens). events: the transcript (dicts). messages: the final
    conversation (chat-template messages; video items as dicts).
    """

    answer: str
    steps: int
    stop_reason: str
    prefill_tokens_saved: int
    prefilled_tokens: int
    cache_bytes: int
    cache_tokens: int
    events: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class VideoAgent:
    """Answers a question about one video by a tool-calling loop over one growing conversation.

    Args:
        session: the model conversation: a `LatentCacheChat` (or an object with its `respond`, `load_video`, `fork`,
            `cache_bytes`, `prefill_tokens_saved`, `prefilled_tokens`; tests use a scripted stand-in).
        video: path of the video file.
        budget: `AgentBudget`.
        coarse: sampling of the whole-video overview (default 1 fps, at most 32 frames, 64 merged patches per frame).
        clip: sampling defaults of the clip tools (inspect_clip, summarize, verify).
        whisper_model: local faster-whisper model folder for `transcribe`, or None.
        system_prompt: instructions before the tools block.

    Attributes:
        tools: the `ToolRegistry`; `agent.tools.register(fn)` adds a documented function as a tool.
        duration: video length in seconds (from the overview's decoder metadata).

    Raises:
        FileNotFoundError, VideoLoadError: the video cannot be decoded (raised here, before any model call).
    """

    def __init__(
        self,
        session,
        video: str | os.PathLike,
        budget: AgentBudget | None = None,
        coarse: ClipSettings | None = None,
        clip: ClipSettings | None = None,
        whisper_model: str | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ):
        self.session = session
        self.video = str(video)
        self.budget = budget or AgentBudget()
        self.coarse_item = (coarse or ClipSettings(fps=1.0, max_frames=32, max_pixels=64 * 32 * 32)).item(self.video)
        frames, meta = session.load_video(self.coarse_item)
        self.coarse_frames = int(frames.shape[0])
        self.duration = float(meta.duration)
        self.system_prompt = system_prompt
        self.video_tools = VideoTools(self.video, self.duration, session, self.coarse_item, clip, whisper_model)
        self.tools = self.video_tools.register_all(ToolRegistry())

    def _run_tool(self, call, index: int) -> ToolResult:
        if index >= self.budget.max_tool_calls:
            return ToolResult(f"error: skipped, at most {self.budget.max_tool_calls} tool calls per turn", error=True)
        if call.error:
            return ToolResult(f"error: {call.error}", error=True)
        result = self.tools.call(call.name, call.arguments)
        for item in result.videos:  # decode now: a clip that cannot be decoded must not reach (and break) the prompt
            try:
                self.session.load_video(item)
            except Exception as err:
                return ToolResult(f"error: {call.name} returned a video that cannot be decoded: {err}", error=True)
        return result

    def run(self, question: str) -> AgentResult:
        """Run the loop on `question`; never raises on model output and ends within `budget`."""
        messages = [
            {"role": "system", "content": self.system_prompt},
            {
                "role": "user",
                "content": [
                    self.coarse_item,
                    {
                        "type": "text",
                        "text": f"The video is {self.duration:.1f} s long. Question: {_VISION_MARKERS.sub('', question)}",
                    },
                ],
            },
        ]
        events: list[dict] = []
        answer, stop_reason, steps = "", "step budget", 0
        for step in range(1, self.budget.max_steps + 1):
            last = step == self.budget.max_steps
            if last and step > 1:
                messages.append({"role": "user", "content": FINAL_STEP_PROMPT})
            try:
                reply = self.session.respond(
                    messages,
                    tools=self.tools.schemas(),
                    max_new_tokens=self.budget.max_new_tokens,
                    max_context_tokens=self.budget.max_context_tokens,
                )
            except ContextBudgetError as err:
                events.append({"step": step, "role": "stop", "text": str(err)})
                stop_reason = "token budget"
                break
            steps = step
            text = _VISION_MARKERS.sub("", reply.text)
            messages.append({"role": "assistant", "content": text})
            outside, calls = parse_tool_calls(text)
            events.append(
                {
                    "step": step, "role": "assistant", "text": text,
                    "prompt_tokens": reply.prompt_tokens, "reused_tokens": reply.reused_tokens,
                    "prefilled_tokens": reply.prefilled_tokens, "new_tokens": reply.new_tokens,
                    "seconds": round(reply.seconds, 3),
                }
            )  # fmt: skip
            answer = " ".join(_THINK.sub(" ", outside).split())
            if not calls:
                stop_reason = "answer"
                break
            if last:
                break
            for index, call in enumerate(calls):
                result = self._run_tool(call, index)
                text = _VISION_MARKERS.sub("", result.text)
                if len(text) > self.budget.max_tool_chars:
                    text = text[: self.budget.max_tool_chars] + " [truncated]"
                content = [{"type": "text", "text": text}, *result.videos] if result.videos else text
                messages.append({"role": "tool", "name": call.name or "invalid", "content": content})
                events.append(
                    {
                        "step": step, "role": "tool", "name": call.name, "arguments": call.arguments,
                        "result": text, "videos": result.videos, "error": result.error,
                    }
                )  # fmt: skip
        side = self.video_tools._side
        saved = self.session.prefill_tokens_saved + (side.prefill_tokens_saved if side is not None else 0)
        prefilled = self.session.prefilled_tokens + (side.prefilled_tokens if side is not None else 0)
        return AgentResult(
            answer=answer,
            steps=steps,
            stop_reason=stop_reason,
            prefill_tokens_saved=saved,
            prefilled_tokens=prefilled,
            cache_bytes=self.session.cache_bytes(),
            cache_tokens=self.session.cache_tokens(),
            events=events,
            messages=messages,
        )


def format_transcript(events: list[dict]) -> str:
    """Human-readable transcript: one block per assistant turn and tool result."""
    lines = []
    for e in events:
        if e["role"] == "assistant":
            lines.append(
                f"[step {e['step']}] assistant ({e['prompt_tokens']} prompt tokens: {e['reused_tokens']} from the "
                f"cache, {e['prefilled_tokens']} prefilled; {e['new_tokens']} new, {e['seconds']:.2f} s): {e['text']}"
            )
        elif e["role"] == "tool":
            videos = f" [+{len(e['videos'])} video]" if e["videos"] else ""
            lines.append(f"[step {e['step']}] tool {e['name']}({json.dumps(e['arguments'])}) -> {e['result']}{videos}")
        else:
            lines.append(f"[step {e['step']}] {e['role']}: {e['text']}")
    return "\n".join(lines)


def write_transcript(path: str | os.PathLike, result: AgentResult, **extra) -> Path:
    """Write the result as JSON to `path` atomically (a temp file in the same folder, renamed when complete).

    Raises:
        FileNotFoundError: the folder of `path` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"transcript folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({**extra, **result.to_json()}, handle, indent=1, ensure_ascii=False, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
