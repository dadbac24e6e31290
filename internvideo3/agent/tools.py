"""The agent's tools (SPEC §12: segmentation, speech recognition, temporal grounding, search, summarisation,
verification, plus re-inspection and notes) and the registry users extend.

A tool is a documented Python function: its Google-style docstring and type hints give the JSON schema the chat
template shows the model (transformers' `get_json_schema`, the same schema `apply_chat_template(tools=[fn])` builds).
It returns a string or a `ToolResult` (text plus new video items for the context). Calls are validated against the
schema; any problem (unknown tool, bad or missing arguments, out-of-range timestamps, an exception in the tool) is
returned as an error result, never raised, so the model sees it and the loop goes on.

    registry = ToolRegistry()
    def count_people(start_s: float) -> str:
        '''Count the people visible at a moment.

        Args:
            start_s: Time in seconds from the start of the video.
        '''
        ...
    registry.register(count_people)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from transformers.utils import get_json_schema

from ..answers import final_answer, find_interval
from . import media

_JSON_TYPES = {
    "number": (int, float),
    "integer": (int,),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class ToolError(ValueError):
    """An expected failure of a tool (bad range, nothing found): its message is shown to the model as the result."""


@dataclass
class ToolResult:
    """What a tool returns to the conversation: `text`, and `videos` (chat-template video items, e.g.
    `{"type": "video", "video": path, "video_start": 10.0, "video_end": 20.0, "fps": 2.0}`) appended after it.
    `error` marks a failed call (the text then says why)."""

    text: str
    videos: list[dict] = field(default_factory=list)
    error: bool = False


class ToolRegistry:
    """Name -> (function, JSON schema). `register` any documented function; `call` validates and never raises."""

    def __init__(self):
        self._tools: dict[str, tuple[Callable, dict]] = {}

    def register(self, fn: Callable, name: str | None = None) -> Callable:
        """Add `fn` under `name` (default: its `__name__`); its schema comes from its docstring and type hints.

        Raises:
            transformers.utils.chat_template_utils.DocstringParsingException / TypeHintParsingException: the function
                lacks a docstring, an argument description or a type hint (the model could not be told how to call it).
        """
        schema = get_json_schema(fn)
        if name is not None:
            schema["function"]["name"] = name
        self._tools[schema["function"]["name"]] = (fn, schema)
        return fn

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict]:
        """The JSON schemas in registration order, for `apply_chat_template(tools=...)`."""
        return [schema for _, schema in self._tools.values()]

    def validate(self, name: str, arguments: dict) -> dict:
        """Check `arguments` against the schema of `name`; returns them with integral floats given for integer
        parameters turned into ints. Raises ToolError naming the tool and the argument."""
        if name not in self._tools:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(self._tools)}")
        params = self._tools[name][1]["function"].get("parameters", {})
        props, required = params.get("properties", {}), params.get("required", [])
        unknown = sorted(set(arguments) - set(props))
        if unknown:
            raise ToolError(f"{name} got unknown argument(s) {unknown}; it takes {sorted(props)}")
        missing = [p for p in required if p not in arguments]
        if missing:
            raise ToolError(f"{name} is missing required argument(s) {missing}")
        clean = {}
        for key, value in arguments.items():
            expected = props[key].get("type")
            types = expected if isinstance(expected, list) else [expected]
            if value is None and ("null" in types or key not in required):
                continue
            if expected is not None and not any(_matches(value, t) for t in types):
                raise ToolError(f"{name}: argument {key}={value!r} must be of type {expected}")
            if "integer" in types and isinstance(value, float):
                value = int(value)
            if props[key].get("enum") and value not in props[key]["enum"]:
                raise ToolError(f"{name}: argument {key}={value!r} must be one of {props[key]['enum']}")
            clean[key] = value
        return clean

    def call(self, name: str, arguments: dict) -> ToolResult:
        """Run a tool call; every failure becomes `ToolResult(error=True)` whose text names the tool and the cause."""
        try:
            arguments = self.validate(name, arguments)
            result = self._tools[name][0](**arguments)
        except ToolError as err:
            return ToolResult(f"error: {err}", error=True)
        except Exception as err:  # a tool's own bug must not end the loop: the model sees what went wrong
            return ToolResult(f"error: {name} failed: {type(err).__name__}: {err}", error=True)
        if isinstance(result, ToolResult):
            return result
        return ToolResult(str(result))


def _matches(value, json_type: str) -> bool:
    if json_type in ("number", "integer") and isinstance(value, bool):
        return False
    if json_type == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(json_type, (object,)))


# ----------------------------------------------------------------------------------------------------------------------
# The video tools
# ----------------------------------------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ClipSettings:
    """Sampling of a video item: `fps` (frames per second of video), `max_frames` (frames), `max_pixels` (pixels per
    frame; the per-frame lower bound is lowered to it so small values take effect)."""

    fps: float = 2.0
    max_frames: int = 64
    max_pixels: int = 256 * 32 * 32

    def item(self, video: str, start_s: float | None = None, end_s: float | None = None, **overrides) -> dict:
        """A chat-template video item with these settings (`video_start` / `video_end` in seconds when given)."""
        values = {"fps": self.fps, "max_frames": self.max_frames, "max_pixels": self.max_pixels, **overrides}
        item = {"type": "video", "video": str(video), "fps": float(values["fps"]), "max_frames": int(values["max_frames"])}
        item["min_pixels"] = item["max_pixels"] = int(values["max_pixels"])
        if start_s is not None:
            item["video_start"], item["video_end"] = float(start_s), float(end_s)
        return item


class VideoTools:
    """The default tools over one video, bound to the model session that runs them.

    Args:
        video: path of the video file.
        duration: its length in seconds (timestamps of every tool are seconds from its start, in [0, duration]).
        session: the conversation backend (a `LatentCacheChat` or a stand-in): `load_video(item)` decodes an item,
            `fork()` gives a side conversation whose `respond(messages, max_new_tokens=...)` answers ground /
            summarize / verify without touching the main context.
        coarse_item: the video item of the whole-video view (ground() asks about it).
        clip: sampling defaults of inspect_clip / summarize / verify.
        whisper_model: local faster-whisper model folder for transcribe(), or None.
        side_max_new_tokens: token budget of one side answer.
        max_fps: upper bound on inspect_clip's `fps` (frames per second); `clip.max_frames` bounds its frames.
    """

    def __init__(
        self,
        video: str,
        duration: float,
        session,
        coarse_item: dict,
        clip: ClipSettings | None = None,
        whisper_model: str | None = None,
        side_max_new_tokens: int = 128,
        max_fps: float = 30.0,
    ):
        self.video, self.duration, self.session = str(video), float(duration), session
        self.coarse_item = coarse_item
        self.clip = clip or ClipSettings()
        self.whisper_model = whisper_model
        self.side_max_new_tokens = side_max_new_tokens
        self.max_fps = max_fps
        self.notes: list[str] = []
        self._shots: list[tuple[float, float]] | None = None
        self._side = None
        self._whisper = None  # the loaded Whisper model: one per agent, loaded on the first transcribe()

    def register_all(self, registry: ToolRegistry) -> ToolRegistry:
        """Register every default tool in `registry` (returned)."""
        for fn in (
            self.inspect_clip, self.segment, self.ground, self.summarize, self.verify,
            self.note, self.search_notes, self.transcribe,
        ):  # fmt: skip
            registry.register(fn)
        return registry

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _check_range(self, start_s: float, end_s: float) -> None:
        if not (0.0 <= start_s < end_s):
            raise ToolError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s} (seconds)")
        if end_s > self.duration + 1e-6:
            raise ToolError(f"end_s={end_s} is past the end of the video ({self.duration:.2f} s)")

    def _ask(self, item: dict, prompt: str) -> str:
        if self._side is None:
            self._side = self.session.fork()
        messages = [{"role": "user", "content": [item, {"type": "text", "text": prompt}]}]
        return self._side.respond(messages, max_new_tokens=self.side_max_new_tokens).text.strip()

    # ---- tools (docstrings are what the model reads) ---------------------------------------------------------------
    def inspect_clip(self, start_s: float, end_s: float, fps: float = 2.0, max_pixels: int = 262144) -> ToolResult:
        """Look again at a segment of the video, denser and sharper than the overview; the clip is added to the context.

        Args:
            start_s: Segment start, in seconds from the start of the video.
            end_s: Segment end, in seconds from the start of the video.
            fps: Frames to sample per second of video.
            max_pixels: Upper bound on pixels per frame (1024 = one 32x32 patch).
        """
        self._check_range(start_s, end_s)
        if not 0 < fps <= self.max_fps:
            raise ToolError(f"fps={fps} must be in (0, {self.max_fps}]")
        if not 1024 <= max_pixels <= 16384 * 1024:
            raise ToolError(f"max_pixels={max_pixels} must be in [1024, {16384 * 1024}]")
        item = self.clip.item(self.video, start_s, end_s, fps=fps, max_pixels=max_pixels)
        frames, meta = self.session.load_video(item)
        stamps = list(getattr(meta, "timestamps", None) or [])
        first, last = (stamps[0], stamps[-1]) if stamps else (start_s, end_s)
        text = (
            f"clip {start_s:.1f}-{end_s:.1f} s: {frames.shape[0]} frames at {fps:g} fps, "
            f"{frames.shape[2]}x{frames.shape[1]} pixels, sampled from {first:.1f} s to {last:.1f} s"
        )
        return ToolResult(text, videos=[item])

    def segment(self) -> str:
        """Split the video into shots (camera cuts) and list them with their start and end times in seconds."""
        if self._shots is None:
            self._shots = media.detect_shots(self.video)
        return f"{len(self._shots)} shots: " + "; ".join(
            f"shot {i + 1}: {start:.2f}-{end:.2f} s" for i, (start, end) in enumerate(self._shots)
        )

    def ground(self, query: str) -> str:
        """Find when something happens in the video: returns [start_s, end_s] in seconds.

        Args:
            query: What to find, in words (an event, action or object).
        """
        if not query.strip():
            raise ToolError("query is empty")
        answer = self._ask(
            self.coarse_item,
            f'When does this happen in the video: "{query}"? Reply only with its start and end time in seconds as '
            f"[start_s, end_s].",
        )
        span = find_interval(final_answer(answer))
        if span is None:
            raise ToolError(f"could not ground {query!r}: the model gave no [start_s, end_s] (it said {answer!r})")
        start, end = sorted(span)
        if end <= 0 or start >= self.duration:
            raise ToolError(f"could not ground {query!r}: [{start}, {end}] lies outside the video (0-{self.duration:.2f} s)")
        return f"[{max(start, 0.0):.1f}, {min(end, self.duration):.1f}]"

    def summarize(self, start_s: float, end_s: float) -> str:
        """Summarize what happens in a segment of the video.

        Args:
            start_s: Segment start, in seconds from the start of the video.
            end_s: Segment end, in seconds from the start of the video.
        """
        self._check_range(start_s, end_s)
        item = self.clip.item(self.video, start_s, end_s)
        return self._ask(item, f"Summarize what happens in this clip ({start_s:.1f}-{end_s:.1f} s) in a few sentences.")

    def verify(self, claim: str, start_s: float, end_s: float) -> str:
        """Check a claim against a segment of the video: returns supported, contradicted or unclear, with the evidence.

        Args:
            claim: The statement to check.
            start_s: Segment start, in seconds from the start of the video.
            end_s: Segment end, in seconds from the start of the video.
        """
        self._check_range(start_s, end_s)
        if not claim.strip():
            raise ToolError("claim is empty")
        item = self.clip.item(self.video, start_s, end_s)
        answer = self._ask(
            item, f'Claim: "{claim}". Does this clip support the claim? Start with yes or no, then give the evidence.'
        )
        word = (_WORD.findall(answer.lower()) or [""])[0]
        verdict = {"yes": "supported", "no": "contradicted"}.get(word, "unclear")
        return f"{verdict}: {answer}"

    def note(self, text: str) -> str:
        """Save a note (an observation with its timestamps) to recall later with search_notes.

        Args:
            text: The note.
        """
        if not text.strip():
            raise ToolError("note text is empty")
        self.notes.append(text.strip())
        return f"note {len(self.notes)} saved"

    def search_notes(self, query: str) -> str:
        """Search the saved notes; returns the best matches, most shared words first.

        Args:
            query: Words to look for.
        """
        words = set(_WORD.findall(query.lower()))
        if not words:
            raise ToolError("query has no words")
        scored = [(len(words & set(_WORD.findall(n.lower()))), i) for i, n in enumerate(self.notes)]
        hits = sorted((s, i) for s, i in scored if s > 0)[::-1][:5]
        if not hits:
            return f"no note matches {query!r} ({len(self.notes)} notes)"
        return "; ".join(f"note {i + 1}: {self.notes[i]}" for _, i in sorted(hits, key=lambda h: (-h[0], h[1])))

    def transcribe(self, start_s: float, end_s: float) -> str:
        """Transcribe the speech in a segment of the video (speech recognition), with timestamps in seconds.

        Args:
            start_s: Segment start, in seconds from the start of the video.
            end_s: Segment end, in seconds from the start of the video.
        """
        self._check_range(start_s, end_s)
        if not media.has_audio(self.video):
            raise ToolError("the video has no audio track")
        reason = media.whisper_unavailable_reason(self.whisper_model)
        if reason:
            raise ToolError(reason)
        samples = media.extract_audio(self.video, start_s, end_s)
        if self._whisper is None:
            self._whisper = media.load_whisper(self.whisper_model)
        segments = media.transcribe_audio(samples, self._whisper, offset_s=start_s)
        if not segments:
            return f"no speech between {start_s:.1f} and {end_s:.1f} s"
        return " ".join(f"[{a:.1f}-{b:.1f} s] {text}" for a, b, text in segments)
