"""InternVideo3 processor: video decoding (PyAV), frame sampling, Qwen3-VL image/video preprocessing, prompt layout.

Hugging Face remote code (SPEC §7, §8): this flat file travels with a checkpoint and is loaded with
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` on transformers 4.57.3 and 5.x. Top-level imports are
limited to torch, numpy, PIL and transformers; PyAV (`av`) is imported only when a video file is decoded.

Pipeline (the numbers are the InternVideo3-8B / Qwen3-VL-8B ones):

    video file --load_video--> frames uint8 [T, H, W, 3] + VideoMetadata (timestamps in seconds)
        T: frames sampled at `fps` (default 2) clamped to [min_frames, max_frames], padded to a multiple of 2
    frames --resize (bicubic, antialiased) to multiples of 32 within the pixel budget--> [T, 3, H', W']
        --(x - 127.5) / 127.5--> --patchify--> pixel_values_videos [T/2 * H'/16 * W'/16, 1536] float32
                                               video_grid_thw [n_videos, 3] = (T/2, H'/16, W'/16)
    prompt: each group g of 2 frames -> "<{t_g:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (H'/32 * W'/32)
            + "<|vision_end|>", t_g = mean timestamp of the group's two frames.

Numerical contract: for the same decoded frames and budget, `pixel_values_videos` equals transformers'
`Qwen3VLVideoProcessor` (torchvision's uint8 bicubic antialiased resize is `torch.nn.functional.interpolate`, used
here directly) and `pixel_values` equals transformers' PIL Qwen2-VL image processor (PIL bicubic); the prompt layout
equals `Qwen3VLProcessor` of transformers <= 5.10 and >= 5.25, on every supported transformers version (5.12 to 5.24
keep two extra outer `<|vision_start|>`/`<|vision_end|>` tokens per video; this package never does).

Two video pixel budgets (SPEC §7); both produce multiples of 32 and both are selectable per call and per video:

* ``video_budget="per_frame"`` (default, qwen-vl-utils semantics): every frame gets between `min_pixels`
  (128·32² = 131,072) and `max_pixels` (768·32² = 786,432) pixels, and all frames together at most `total_pixels`
  (128,000·32²·0.9 = 117,964,800 pixels, i.e. about 115,200 visual tokens). Token cost grows with clip length.
* ``video_budget="total"`` (transformers' `Qwen3VLVideoProcessor` semantics): `size={"shortest_edge": 4,096,
  "longest_edge": 25,165,824}` bounds the whole T×H×W volume, so a short clip keeps near-native resolution and a long
  one is shrunk. Passing `size` to a call selects it; passing `min_pixels`/`max_pixels`/`total_pixels` selects
  ``"per_frame"``; `video_budget=` overrides both.
"""

from __future__ import annotations

import bisect
import ctypes
import math
import mmap
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as _smart_resize_volume
from transformers.processing_utils import ProcessorMixin
from transformers.video_utils import VideoMetadata as _TransformersVideoMetadata

try:  # Hub export / checkpoint folder: flat sibling files
    from .configuration_internvideo3 import numeric_range, numeric_range_problem
except ImportError:  # source checkout with the repository root on sys.path
    from configuration_internvideo3 import numeric_range, numeric_range_problem

# Size rules (SPEC §7) are transformers' own, imported from modules that need no torchvision. The one version
# difference: 5.x moved the PIL image processor, and its `smart_resize`, to image_processing_pil_qwen2_vl (its
# image_processing_qwen2_vl needs torchvision); 4.57's image_processing_qwen2_vl is the PIL/numpy one.
try:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

__all__ = [
    "InternVideo3Processor",
    "TruncatedVideoWarning",
    "VideoLoadError",
    "VideoMetadata",
    "load_video",
    "load_image",
    "sample_frame_indices",
    "smart_resize",
    "resize_frames",
    "group_timestamps",
    "CHAT_TEMPLATE",
]

# ---------------------------------------------------------------------------------------------------------------
# Constants (SPEC §2 vision config, §7 processor). Everything the processor uses is also a constructor argument.
# ---------------------------------------------------------------------------------------------------------------
PATCH_SIZE = 16
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 32: resized sides are multiples of this

DEFAULT_FPS = 2.0
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768
# qwen-vl-utils: VIDEO_MIN_TOKEN_NUM = 128, VIDEO_MAX_TOKEN_NUM = 768 tokens per frame, MODEL_SEQ_LEN = 128000
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR  # 131,072 pixels per frame
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # 786,432 pixels per frame
VIDEO_TOTAL_PIXELS = 128000 * FACTOR * FACTOR * 9 // 10  # 117,964,800 pixels for the whole clip
# qwen-vl-utils fetch_video: a frame's upper bound is at least 1.05 * min_pixels
FRAME_PIXELS_SLACK = 1.05
# transformers' Qwen3-VL release (video_preprocessor_config.json): a T*H*W budget
VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}
# transformers' Qwen3-VL release (preprocessor_config.json): per-image pixel bounds
IMAGE_MIN_PIXELS = 65536
IMAGE_MAX_PIXELS = 16777216
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
MAX_ASPECT_RATIO = 200

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Budget keys a call, or a single image/video item of a chat message, may set (qwen-vl-utils / transformers names).
VIDEO_SETTING_KEYS = (
    "fps", "min_frames", "max_frames", "nframes", "num_frames", "video_start", "video_end", "video_budget",
    "min_pixels", "max_pixels", "total_pixels", "size", "resized_height", "resized_width",
)  # fmt: skip
IMAGE_SETTING_KEYS = ("image_min_pixels", "image_max_pixels", "resized_height", "resized_width")
# keys an image item of a chat message may set (qwen-vl-utils' names, plus ours)
IMAGE_ITEM_KEYS = ("min_pixels", "max_pixels", *IMAGE_SETTING_KEYS)
TEXT_KWARGS = (
    "padding", "truncation", "max_length", "padding_side", "return_attention_mask", "add_special_tokens",
    "pad_to_multiple_of", "return_token_type_ids", "return_length", "verbose",
)  # fmt: skip


class VideoLoadError(ValueError):
    """A video could not be opened or decoded (corrupt, empty, no video stream, zero frames). The message names the
    file or URL and the reason."""


class TruncatedVideoWarning(UserWarning):
    """A video file holds clearly less than its container declares (e.g. a partly downloaded mp4 whose index sits at
    the front): only the frames that exist are used. The message names the file and gives declared vs present
    seconds and frames. Make it an error with `warnings.simplefilter("error", TruncatedVideoWarning)` (a processor
    loaded with `AutoProcessor` carries the class as `processor.TruncatedVideoWarning`); it is then raised from
    `load_video` / the processor call."""


# Numeric settings: (kind, lower bound, lower bound inclusive, unit). Checked where settings are merged
# (`InternVideo3Processor._video_settings` / `image_target_size`, and the public `load_video`): a zero or negative
# value must never be clamped into a silently different sampling or size.
_NUMERIC_SETTINGS = {
    "fps": ("number", 0, False, "frames per second of video"),
    "source_fps": ("number", 0, False, "frames per second of the given frames"),
    "min_frames": ("integer", 1, True, "frames"),
    "max_frames": ("integer", 1, True, "frames"),
    "nframes": ("integer", 1, True, "frames"),
    "num_frames": ("integer", 1, True, "frames"),
    "min_pixels": ("number", 0, False, "pixels per frame"),
    "max_pixels": ("number", 0, False, "pixels per frame"),
    "total_pixels": ("number", 0, False, "pixels per video"),
    "video_start": ("number", 0, True, "seconds"),
    "video_end": ("number", 0, True, "seconds"),
    "resized_height": ("integer", 1, True, "pixels"),
    "resized_width": ("integer", 1, True, "pixels"),
    "image_min_pixels": ("number", 0, False, "pixels per image"),
    "image_max_pixels": ("number", 0, False, "pixels per image"),
}


def _check_setting(name: str, value) -> None:
    """Raise ValueError naming `name`, `value` and the allowed range unless `value` fits `_NUMERIC_SETTINGS[name]`."""
    kind, low, inclusive, unit = _NUMERIC_SETTINGS[name]
    problem = numeric_range_problem(value, kind == "integer", low, inclusive)
    if problem:
        allowed = f"{numeric_range(kind == 'integer', low, inclusive)} ({unit})"
        named = f" ({type(value).__name__})" if problem == "type" else ""
        raise ValueError(f"{name} must be {allowed}, got {value!r}{named}")


def _check_video_settings(settings: dict, explicit: Sequence[str] = ()) -> None:
    """Validate merged video/image settings (keys of `VIDEO_SETTING_KEYS`, `IMAGE_SETTING_KEYS`, `source_fps`).

    Every numeric value must lie in its range (`fps` > 0, frame counts >= 1, pixel budgets > 0, `video_start` >= 0,
    `video_start` <= `video_end`, ...), `min_pixels <= max_pixels`, `size` must be {"shortest_edge", "longest_edge"}
    volumes with shortest <= longest, and `resized_height`/`resized_width` come together. `min_frames > max_frames`
    is an error only when `min_frames` is in `explicit` (set by the caller): a `max_frames` below the default
    `min_frames` simply caps the count, as in transformers and qwen-vl-utils. `None` means "not set".

    Raises:
        ValueError: the message names the setting, the value and the allowed range.
    """
    for name, value in settings.items():
        if name in _NUMERIC_SETTINGS and value is not None:
            _check_setting(name, value)
    get = settings.get
    if get("min_frames") is not None and get("max_frames") is not None and "min_frames" in explicit:
        if get("min_frames") > get("max_frames"):
            raise ValueError(f"min_frames ({get('min_frames')}) must be <= max_frames ({get('max_frames')})")
    for low, high in (("min_pixels", "max_pixels"), ("image_min_pixels", "image_max_pixels")):
        if get(low) is not None and get(high) is not None and get(low) > get(high):
            raise ValueError(f"{low} ({get(low)}) must be <= {high} ({get(high)})")
    # equal bounds are a still: the frame shown at that instant
    if get("video_start") is not None and get("video_end") is not None and get("video_start") > get("video_end"):
        raise ValueError(f"video_start ({get('video_start')} s) must be <= video_end ({get('video_end')} s)")
    if (get("resized_height") is None) != (get("resized_width") is None):
        raise ValueError(
            f"resized_height and resized_width go together, got resized_height={get('resized_height')!r}, "
            f"resized_width={get('resized_width')!r}"
        )
    size = get("size")
    if size is not None:
        if not isinstance(size, dict) or not {"shortest_edge", "longest_edge"} <= set(size):
            raise ValueError(
                f"size must be a dict with 'shortest_edge' and 'longest_edge' (T*H*W pixel volumes), got {size!r}"
            )
        for key in ("shortest_edge", "longest_edge"):
            value = size[key]
            if numeric_range_problem(value, False, 0, False):
                allowed = numeric_range(False, 0, False)
                raise ValueError(f"size[{key!r}] must be {allowed} (pixels of the T*H*W volume), got {value!r}")
        if size["shortest_edge"] > size["longest_edge"]:
            raise ValueError(
                f"size['shortest_edge'] ({size['shortest_edge']}) must be <= size['longest_edge'] "
                f"({size['longest_edge']})"
            )


class _Settings(dict):
    """Settings merged and validated by `InternVideo3Processor._video_settings` / `_image_settings`: used as they
    are where they are passed on (`video_target_size`, `image_target_size`), never merged or checked again."""


def _resolve_bounds(
    levels: Sequence[dict], low_names: tuple[str, ...], high_names: tuple[str, ...], defaults: tuple,
    yielded_low: Callable[[Any], Any] = lambda high: high,
) -> tuple[Any, Any]:
    """(low, high) pixel bounds from `levels`, least to most specific (processor < call < item), over `defaults`.

    A level sets a bound with the first of its names it holds (`image_min_pixels` before `min_pixels`); a more
    specific level replaces it. When the bounds conflict (low > high) the one from the less specific level (a
    default included) yields, as qwen-vl-utils and transformers honour a `max_pixels` given alone below the default
    `min_pixels`: a yielding high bound takes the low one's value, a yielding low bound `yielded_low(high)`.

    Raises:
        ValueError: a bound out of range, or both bounds set by one level and low > high (names both values).
    """
    bounds = [(defaults[0], -1, low_names[0]), (defaults[1], -1, high_names[0])]  # (value, level, name)
    for level, values in enumerate(levels):
        for side, names in enumerate((low_names, high_names)):
            name = next((n for n in names if values.get(n) is not None), None)
            if name is not None:
                _check_setting(name, values[name])
                bounds[side] = (values[name], level, name)
    (low, low_level, low_name), (high, high_level, high_name) = bounds
    if low is not None and high is not None and low > high:
        if low_level == high_level:
            raise ValueError(f"{low_name} ({low}) must be <= {high_name} ({high})")
        if low_level < high_level:
            low = yielded_low(high)
        else:
            high = low
    return low, high


def _yielded_min_pixels(max_pixels):
    """A video `min_pixels` that yields to a smaller given `max_pixels`: with qwen-vl-utils' 1.05 slack on top
    (`video_target_size`) frames still stay within `max_pixels`."""
    return int(max_pixels / FRAME_PIXELS_SLACK)


def _given(values: dict | None) -> dict:
    """The keys of one settings level that are set (`None` means "not set")."""
    return {k: v for k, v in (values or {}).items() if v is not None}


# ---------------------------------------------------------------------------------------------------------------
# Chat template (SPEC §7): Qwen3-VL message layout plus Qwen3's thinking switch and tool calls.
# ---------------------------------------------------------------------------------------------------------------
CHAT_TEMPLATE = r"""{#- InternVideo3 chat template (Qwen3-VL layout). Image items render as <|vision_start|><|image_pad|><|vision_end|>,
video items as <|vision_start|><|video_pad|><|vision_end|>; the processor expands both. Flags: add_vision_id adds
"Picture n: " / "Video n: " labels; enable_thinking=true opens "<think>\n", enable_thinking=false emits an empty think
block (Qwen3), unset emits nothing (Instruct); tools adds the Qwen3 <tools>/<tool_call> system block. -#}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, count_vision) %}
    {%- if content is string %}
        {{- content }}
    {%- elif content is iterable and content is not mapping %}
        {%- for item in content %}
            {%- if item is string %}
                {{- item }}
            {%- elif item.type == 'image' or item.type == 'image_url' or 'image' in item or 'image_url' in item %}
                {%- if count_vision %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Picture ' ~ image_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif item.type == 'video' or 'video' in item %}
                {%- if count_vision %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Video ' ~ video_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content, true) + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + render_content(messages[0].content, true) + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == 'user' %}
        {%- set query = render_content(message.content, false) %}
        {%- if not (query.startswith('<tool_response>') and query.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- '<|im_start|>system\n' + render_content(message.content, true) + '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\n' + render_content(message.content, true) + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = render_content(message.content, true) %}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if reasoning and loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + render_content(message.content, true) + '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is true %}
        {{- '<think>\n' }}
    {%- elif enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""


# ---------------------------------------------------------------------------------------------------------------
# Frame sampling and timestamps (SPEC §7)
# ---------------------------------------------------------------------------------------------------------------
def sample_frame_indices(
    total_num_frames: int,
    source_fps: float | None,
    fps: float | None = DEFAULT_FPS,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    num_frames: int | None = None,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
) -> tuple[np.ndarray, int]:
    """Indices of the frames to keep, uniformly spread over the clip (transformers' `Qwen3VLVideoProcessor.sample_frames`).

    n = int(total_num_frames / source_fps * fps), clamped to [min_frames, max_frames] and to total_num_frames;
    indices = round(linspace(0, total_num_frames - 1, n)). With `num_frames` set, n = num_frames (at most the total).
    With neither `fps` nor `num_frames`, n = min(total, max_frames). When n is odd, the last index is repeated so the
    count is a multiple of `temporal_patch_size`: the same frames and timestamps transformers produces by padding in
    `patchify` and `_calculate_timestamps`.

    Returns:
        (indices int64 [n_padded], n): n is the count before padding.
    Raises:
        ValueError: `total_num_frames < 1`.
    """
    if total_num_frames < 1:
        raise ValueError(f"cannot sample from {total_num_frames} frames")
    if num_frames is not None:
        n = int(num_frames)
    elif fps is not None:
        if not source_fps or source_fps <= 0:
            raise ValueError(f"sampling at fps={fps} needs the source frame rate, got {source_fps}")
        n = int(total_num_frames / source_fps * fps)
        n = min(max(n, min_frames), max_frames)
    else:
        n = min(max(total_num_frames, min_frames), max_frames)
    # at most one sample per source frame: sampled timestamps then strictly increase
    n = max(1, min(n, total_num_frames))
    indices = np.linspace(0, total_num_frames - 1, n).round().astype(np.int64)
    pad = -n % temporal_patch_size
    if pad:
        indices = np.concatenate([indices, np.repeat(indices[-1:], pad)])
    return indices, n


def group_timestamps(timestamps: Sequence[float], temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> list[float]:
    """Seconds shown for each temporal patch: mean of its first and last frame timestamp (SPEC §7).

    Same arithmetic as transformers' `Qwen3VLProcessor._calculate_timestamps` (a short last group is padded with its
    last timestamp). Returns a list of length ceil(len(timestamps) / temporal_patch_size).
    """
    ts = [float(t) for t in timestamps]
    if len(ts) % temporal_patch_size:
        ts.extend(ts[-1] for _ in range(temporal_patch_size - len(ts) % temporal_patch_size))
    return [(ts[i] + ts[i + temporal_patch_size - 1]) / 2 for i in range(0, len(ts), temporal_patch_size)]


@dataclass
class VideoMetadata(_TransformersVideoMetadata):
    """transformers' `VideoMetadata` (a mapping: `meta.fps` or `meta["fps"]`) with what `load_video` knows besides.

    transformers' fields: `total_num_frames` (frames in the clip, or in the `video_start`..`video_end` window), `fps`
    (source frames per second), `width`/`height` (displayed size in pixels, after rotation, before any resize),
    `duration` (seconds, total_num_frames / fps), `video_backend` ("pyav", or "frames" for in-memory input),
    `frames_indices` (presentation-order indices of the returned frames; padding repeats the last). Added:
    `timestamps` (seconds from the clip's first frame, one per returned frame: the frames' own presentation times,
    where transformers derives frames_indices / fps), `num_sampled_frames` (count before padding to a multiple of 2),
    `source` (path/URL or None), `rotation` (display-matrix rotation in degrees counter-clockwise, already applied),
    `resized` (frames already resized by `load_video(resize_to=...)`), `variable_frame_rate` (sampled uniformly in
    time rather than by index).
    """

    video_backend: str | None = "pyav"
    timestamps: list[float] | None = None  # a field here, a property (frames_indices / fps) in transformers
    num_sampled_frames: int = 0
    source: str | None = None
    rotation: int = 0
    resized: bool = False
    variable_frame_rate: bool = False

    def __post_init__(self):
        if self.timestamps is None and self.fps and self.frames_indices is not None:
            self.timestamps = [i / self.fps for i in self.frames_indices]
        if self.duration is None and self.fps:
            self.duration = self.total_num_frames / self.fps


# ---------------------------------------------------------------------------------------------------------------
# Decoding (SPEC §7): PyAV only, no torchvision / torchcodec / decord.
# ---------------------------------------------------------------------------------------------------------------
def _import_av():
    try:
        import av  # noqa: PLC0415 - optional at import time, required to decode files
    except ImportError as error:  # pragma: no cover - environment dependent
        raise ImportError(
            "decoding video files needs PyAV: `pip install av` (frames already in memory do not need it)"
        ) from error
    return av


def _av_errors(av) -> tuple[type[BaseException], ...]:
    errors = [getattr(getattr(av, "error", None), "FFmpegError", None), getattr(av, "AVError", None)]
    return tuple(e for e in errors if isinstance(e, type)) + (EOFError,)


def _pick_stream(container):
    """The default/best video stream: FFmpeg's `av_find_best_stream` (default disposition first), never cover art."""
    videos = [s for s in container.streams.video if not _has_disposition(s, "attached_pic")]
    if not videos:
        return None
    try:
        best = container.streams.best("video")
    except Exception:  # pragma: no cover - very old PyAV
        best = None
    if best is None or best not in videos:
        defaults = [s for s in videos if _has_disposition(s, "default")]
        best = (defaults or videos)[0]
    return best


def _has_disposition(stream, name: str) -> bool:
    disposition = getattr(stream, "disposition", None)
    try:
        import av  # noqa: PLC0415

        return bool(disposition & getattr(av.stream.Disposition, name))
    except Exception:
        return False


def _display_matrix(frame) -> np.ndarray | None:
    for side in getattr(frame, "side_data", None) or ():
        if str(getattr(side, "type", "")).upper().endswith("DISPLAYMATRIX"):
            matrix = np.frombuffer(bytes(side), dtype=np.int32)
            return matrix if matrix.size == 9 else None
    return None


def _orient(array: np.ndarray, rotation: float, matrix: np.ndarray | None) -> np.ndarray:
    """Apply the display matrix the way FFmpeg's autorotate does (ffmpeg_filter.c): a phone clip stored landscape with
    a 90° matrix comes out portrait. `rotation` is `av_display_rotation_get` (degrees counter-clockwise)."""
    if not rotation and matrix is None:
        return array
    theta = -float(rotation)  # clockwise degrees, as fftools' get_rotation
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    m = matrix if matrix is not None else np.array([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30])
    if abs(theta - 90) < 1.0:  # transpose=cclock_flip (plain transpose) or clock
        return array.transpose(1, 0, 2) if m[3] > 0 else np.rot90(array, -1)
    if abs(theta - 180) < 1.0:
        if m[0] < 0:
            array = array[:, ::-1]
        if m[4] < 0:
            array = array[::-1]
        return array
    if abs(theta - 270) < 1.0:  # transpose=clock_flip or cclock
        return np.rot90(array, -1)[::-1] if m[3] < 0 else np.rot90(array, 1)
    if abs(theta) < 1.0 or abs(theta - 360) < 1.0:
        return array[::-1] if m[4] < 0 else array
    # arbitrary angles (never written by cameras): nearest quarter turn
    return np.rot90(array, int(round(-theta / 90)) % 4)


def _rotation_of(frame, stream) -> tuple[float, np.ndarray | None]:
    matrix = _display_matrix(frame)
    rotation = getattr(frame, "rotation", None)
    if rotation is None and matrix is not None:  # PyAV without VideoFrame.rotation
        a, b = matrix[0] / 65536.0, matrix[1] / 65536.0
        c, d = matrix[3] / 65536.0, matrix[4] / 65536.0
        rotation = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    if rotation is None or (not rotation and matrix is None):
        # FFmpeg < 5 exported the clockwise "rotate" tag instead of frame side data
        tag = (getattr(stream, "metadata", None) or {}).get("rotate")
        rotation = -float(tag) if tag not in (None, "") else 0.0
    return float(rotation or 0.0), matrix


def _download(url: str, directory: str) -> str:
    """Fetch an http(s) video once into `directory` (so both decoding passes read a local, seekable file)."""
    import urllib.request  # noqa: PLC0415

    name = os.path.basename(url.split("?", 1)[0]) or "video"
    path = os.path.join(directory, name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except Exception as error:
        raise VideoLoadError(f"cannot download video {url!r}: {error}") from error
    return path


def _resolve_source(source) -> tuple[str, bool]:
    """(path or URL, is_remote). Raises FileNotFoundError for a missing local file."""
    source = os.fspath(source)
    if source.startswith("file://"):
        from urllib.parse import unquote  # noqa: PLC0415

        source = unquote(source[len("file://") :])
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source):
        return source, True
    if not os.path.exists(source):
        raise FileNotFoundError(f"video file not found: {source!r}")
    if os.path.isdir(source):
        raise VideoLoadError(f"cannot decode video {source!r}: it is a directory, not a video file")
    if os.path.getsize(source) == 0:
        raise VideoLoadError(f"cannot decode video {source!r}: the file is empty (0 bytes)")
    return source, False


def _open(av, path: str, label: str):
    try:
        return av.open(path, mode="r", timeout=60) if "://" in path else av.open(path, mode="r")
    except _av_errors(av) + (OSError, ValueError) as error:
        raise VideoLoadError(f"cannot open video {label!r}: {error}") from error


def _presentation_pts(
    av, path: str, label: str
) -> tuple[list[int], Fraction, float | None, int, bool, list[int]]:
    """First pass: demux only (no decoding) to list every frame's presentation timestamp, sorted.

    Sorting by pts puts frames in presentation order even when the container stores them out of order (B-frames,
    files like decord's unordered.mov). Returns (sorted pts, time_base, average fps, stream index, numbered,
    keyframe pts sorted): with `numbered` the stream had no timestamps and frames are numbered in decoding order
    instead (and the keyframe list is empty: nothing to seek to).
    """
    with _open(av, path, label) as container:
        stream = _pick_stream(container)
        if stream is None:
            raise VideoLoadError(f"cannot decode video {label!r}: it has no video stream")
        pts, keyframes, missing = [], [], 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or getattr(packet, "is_discard", False):  # flush / edit-list discarded packets
                    continue
                value = packet.pts if packet.pts is not None else packet.dts
                if value is None:
                    missing += 1
                    continue
                pts.append(int(value))
                if packet.is_keyframe and packet.pts is not None:
                    keyframes.append(int(packet.pts))
        except _av_errors(av) as error:
            raise VideoLoadError(f"cannot decode video {label!r}: {error}") from error
        rate = stream.average_rate or getattr(stream, "guessed_rate", None) or getattr(stream, "base_rate", None)
        time_base = stream.time_base
        index = stream.index
    if missing:
        # a stream without timestamps: number the frames and let the nominal frame rate give their times
        rate = rate or 25
        time_base = Fraction(rate.denominator, rate.numerator) if isinstance(rate, Fraction) else Fraction(1, 25)
        pts = list(range(len(pts) + missing))
        keyframes = []
    pts = sorted(set(pts))
    if not pts:
        raise VideoLoadError(f"cannot decode video {label!r}: the video stream contains no frames")
    return pts, Fraction(time_base), float(rate) if rate else None, index, bool(missing), sorted(set(keyframes))


def _warn_if_truncated(av, path: str, label: str, all_pts: list[int], time_base: Fraction, rate: float | None):
    """Warn (`TruncatedVideoWarning`) when the frames present span clearly less than the container declares.

    A partly downloaded mp4 with its index at the front opens and demuxes fine; only the frames whose data arrived
    exist. Declared: the video stream's duration (else the container's) and frame count; present: first to last
    timestamp plus one frame. "Clearly": short by more than two frames and more than 2 % of the declared duration,
    so rounding in muxers never warns.
    """
    with _open(av, path, label) as container:
        stream = _pick_stream(container)
        declared = None
        if stream.duration and stream.time_base:
            declared = float(stream.duration * stream.time_base)
        elif container.duration:
            declared = container.duration / 1_000_000  # AV_TIME_BASE
        declared_frames = int(stream.frames or 0)
    if not declared or declared <= 0:
        return
    step = 1.0 / rate if rate else (float((all_pts[-1] - all_pts[0]) * time_base) / max(len(all_pts) - 1, 1))
    present = float((all_pts[-1] - all_pts[0]) * time_base) + step
    if declared - present > max(2 * step, 0.02 * declared):
        frames = f"{len(all_pts)} of {declared_frames} declared frames" if declared_frames else f"{len(all_pts)} frames"
        warnings.warn(
            f"video {label!r} is truncated: its container declares {declared:.3f} s but the frames present span "
            f"{present:.3f} s ({frames}); only those are used (a partial download? fetch the file again)",
            TruncatedVideoWarning,
            stacklevel=3,
        )


def _choose_frames(
    times: np.ndarray, source_fps: float | None, settings: dict
) -> tuple[np.ndarray, np.ndarray, int, bool, float]:
    """(frame indices, timestamps in seconds, n before padding, variable frame rate, source fps used).

    Constant frame rate: transformers' index rule (`sample_frame_indices`), timestamps = the frames' own times.
    Variable frame rate: the same count n, placed uniformly in *time*: the frame on screen at each target instant
    (latest frame with time <= target), timestamp = that instant, so a clip with long still segments is not
    oversampled where frames are dense.
    """
    total = len(times)
    diffs = np.diff(times)
    median = float(np.median(diffs)) if total > 1 else 0.0
    vfr = bool(total > 2 and median > 0 and np.max(np.abs(diffs - median)) > 0.25 * median)
    if not source_fps:
        source_fps = (total - 1) / (times[-1] - times[0]) if total > 1 and times[-1] > times[0] else 1.0
    indices, n = sample_frame_indices(
        total,
        source_fps,
        fps=settings.get("fps", DEFAULT_FPS),
        min_frames=settings.get("min_frames", DEFAULT_MIN_FRAMES),
        max_frames=settings.get("max_frames", DEFAULT_MAX_FRAMES),
        num_frames=settings.get("nframes", settings.get("num_frames")),
        temporal_patch_size=settings.get("temporal_patch_size", TEMPORAL_PATCH_SIZE),
    )
    if not vfr:
        return indices, times[indices], n, False, source_fps
    targets = np.linspace(times[0], times[-1], n)
    chosen = np.searchsorted(times, targets + 1e-9, side="right") - 1
    pad = len(indices) - n
    if pad:
        chosen = np.concatenate([chosen, np.repeat(chosen[-1:], pad)])
        targets = np.concatenate([targets, np.repeat(targets[-1:], pad)])
    return chosen.astype(np.int64), targets, n, True, source_fps


def _time_window(times: np.ndarray, video_start, video_end, what: str) -> np.ndarray:
    """Indices of the frames whose time (seconds) lies in [video_start, video_end] (None: unbounded). Raises
    VideoLoadError starting with `what` when none does."""
    lo = -np.inf if video_start is None else float(video_start)
    hi = np.inf if video_end is None else float(video_end)
    window = np.nonzero((times >= lo - 1e-9) & (times <= hi + 1e-9))[0]
    if window.size == 0:
        raise VideoLoadError(
            f"{what}: no frame between video_start={video_start} and video_end={video_end} seconds "
            f"(clip is {times[-1]:.3f} s)"
        )
    return window


# The decode pipeline's queue (RGB frames at the decoded size between the decoding and the resizing thread: 2 keep
# both busy on two cores, issue 18's measurement) and how often the resizing thread checks that it should stop.
_DECODE_QUEUE_FRAMES = 2
_DECODE_QUEUE_POLL_S = 0.05


class _SeekingNotExact(Exception):
    """`_decode_pass` with seeking met something only sequential decoding numbers exactly (a frame without pts)."""


def _decode_selected(
    av, path, label, stream_index, wanted: dict[int, list[int]], slots: int, resize_to, n_sampled, all_pts, numbered,
    sink, shape=None, keyframes: Sequence[int] = (),
):
    """Second pass: hand only the frames whose pts are wanted to `sink(slots, frame, num_slots)`, converted to RGB,
    with the display matrix applied, resized to `resize_to` (memory: the kept frames only). `keyframes`: the
    stream's keyframe pts (sorted); with two or more (and not `numbered`) only what the wanted frames need is decoded
    (`_decode_pass` with seeking), else every frame up to the last wanted one. The frames are the same either way:
    when the seeking pass fails to deliver a frame, meets a frame without pts, or a decoding error, the sequential
    pass runs instead (and reports, or raises, exactly what it always did). `shape`: the displayed size of an
    earlier pass, kept. Returns (delivered: bool per slot, decoded pts in output order, rotation, displayed (h, w),
    resize target)."""
    if len(keyframes) > 1 and not numbered:
        try:
            result = _decode_pass(
                av, path, label, stream_index, wanted, slots, resize_to, n_sampled, all_pts, False, sink, shape,
                keyframes,
            )  # fmt: skip
        except (_SeekingNotExact, VideoLoadError):
            result = None
        if result is not None and all(result[0]):
            return result
    return _decode_pass(av, path, label, stream_index, wanted, slots, resize_to, n_sampled, all_pts, numbered, sink, shape)


def _decode_pass(
    av, path, label, stream_index, wanted: dict[int, list[int]], slots: int, resize_to, n_sampled, all_pts, numbered,
    sink, shape=None, keyframes: Sequence[int] | None = None,
):
    """One decode pass of `_decode_selected`. Without `keyframes`: decode sequentially from the start; frames
    without a pts (or every frame when `numbered`) take the next entry of `all_pts`. With `keyframes`: whenever the
    keyframe before the next wanted frame lies beyond every packet read so far, seek to it (the frames in between
    are not needed: a keyframe starts a fresh decode, so the frames after it come out bit for bit as in sequential
    decoding), and packets of frames that are not wanted are decoded with `skip_frame="NONREF"` (a frame no other
    frame references is then not decoded at all; reference frames are, so wanted frames are unchanged); raises
    `_SeekingNotExact` on a frame without pts. Only wanted frames are converted to RGB and resized. Decoding (on
    FFmpeg's frame + slice threads) and RGB conversion run in this thread; resizing and the sink run in a second
    thread fed through a short queue (at most 2 RGB frames at the decoded size), so on two cores they overlap
    decoding instead of following it (the heavy steps release the GIL). Returns as `_decode_selected`."""
    delivered = [False] * slots
    remaining = sum(len(v) for v in wanted.values())
    seen: list[int] = []
    state = {"shape": shape, "target": None, "orientation": None, "error": None}
    frames: queue.Queue = queue.Queue(maxsize=_DECODE_QUEUE_FRAMES)
    stop = threading.Event()
    # daemon: even a thread this function failed to join can never keep the interpreter from exiting
    consumer = threading.Thread(
        target=_resize_and_sink, args=(frames, state, sink, slots, resize_to, n_sampled, stop),
        name="internvideo3-resize", daemon=True,
    )  # fmt: skip
    consumer.start()
    try:
        with _open(av, path, label) as container:
            stream = container.streams[stream_index]
            stream.thread_type = "AUTO"  # frame + slice threads
            order = sorted(wanted)  # wanted pts, presentation order
            upcoming = 0  # index in `order` of the first wanted pts not yet decoded past
            read_up_to = None  # largest pts of any packet read since the start
            last_seek = None

            def seek_target():
                # the keyframe before the next wanted frame, when sequential decoding has not reached it yet
                if keyframes is None or upcoming >= len(order):
                    return None
                key = keyframes[max(bisect.bisect_right(keyframes, order[upcoming]) - 1, 0)]
                if key <= (keyframes[0] if read_up_to is None else read_up_to):
                    return None
                return key if last_seek is None or key > last_seek else None

            try:
                packets = container.demux(stream)
                while packets is not None:
                    target = seek_target()
                    if target is not None:
                        container.seek(target, stream=stream)  # to the keyframe at or before; flushes the decoder
                        last_seek, packets = target, container.demux(stream)
                    for packet in packets:
                        if keyframes is not None:
                            if packet.pts is not None:
                                read_up_to = packet.pts if read_up_to is None else max(read_up_to, packet.pts)
                            stream.codec_context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
                        for frame in packet.decode():
                            pts = frame.pts
                            if keyframes is not None and pts is None:
                                raise _SeekingNotExact
                            if numbered or pts is None:
                                pts = all_pts[len(seen)] if len(seen) < len(all_pts) else None
                            if pts is None:
                                continue
                            seen.append(int(pts))
                            while upcoming < len(order) and order[upcoming] <= pts:
                                upcoming += 1
                            targets = wanted.get(int(pts))
                            if not targets or delivered[targets[0]]:
                                continue
                            if state["orientation"] is None:
                                # once per pass: reading `frame.side_data` makes PyAV keep that frame alive until
                                # the cyclic garbage collector runs (hundreds of MB over a long 1080p clip)
                                state["orientation"] = _rotation_of(frame, stream)
                            frames.put((targets, _orient(frame.to_ndarray(format="rgb24"), *state["orientation"])))
                            del frame
                            for slot in targets:
                                delivered[slot] = True
                            remaining -= len(targets)
                        if remaining <= 0 or state["error"] is not None:
                            packets = None
                            break
                        if seek_target() is not None:
                            break  # seek, then read on from there
                    else:
                        packets = None  # end of the stream
            except _av_errors(av) as error:
                raise VideoLoadError(f"cannot decode video {label!r}: {error}") from error
        frames.put(None)  # the end: the second thread finishes the queued frames
        consumer.join()
    except BaseException:
        # An error or Ctrl-C here (also a second one while this cleans up) must not leave the thread waiting for
        # frames forever: tell it to stop, then wait for it through further interrupts (it stops within one frame).
        stop.set()
        _join_through_interrupts(consumer)
        raise
    if state["error"] is not None:
        raise state["error"]
    rotation = state["orientation"][0] if state["orientation"] else 0.0
    return delivered, seen, rotation, state["shape"], state["target"]


def _join_through_interrupts(thread: threading.Thread) -> None:
    """`thread.join()` that a KeyboardInterrupt does not cut short (the caller re-raises the first one)."""
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:
            continue


def _resize_and_sink(
    frames: queue.Queue, state: dict, sink, slots: int, resize_to, n_sampled: int, stop: threading.Event
) -> None:
    """`_decode_selected`'s second thread: (targets, RGB frame [H, W, 3] uint8) items until None -> resized, to the
    sink. An error is kept in `state["error"]` (raised by the decoding thread) and the queue drained, never blocked.
    Returns at once, without flushing, when `stop` is set (the decoding thread failed or was interrupted)."""
    batch = None
    while not stop.is_set():
        try:
            item = frames.get(timeout=_DECODE_QUEUE_POLL_S)
        except queue.Empty:
            continue
        if item is None:
            break
        if state["error"] is not None:
            continue
        try:
            targets, array = item
            if state["shape"] is None:
                state["shape"] = array.shape[:2]
            if batch is None:
                target = resize_to(n_sampled, *state["shape"]) if callable(resize_to) else resize_to
                state["target"] = None if target is None else tuple(target)
                batch = _ResizeBatch(sink, state["target"] or state["shape"], slots, state["shape"])
            batch.add(targets, array)
        except BaseException as error:  # noqa: BLE001 - re-raised by the decoding thread
            state["error"] = error
    if batch is not None and state["error"] is None and not stop.is_set():
        try:
            batch.flush()
        except BaseException as error:  # noqa: BLE001
            state["error"] = error


class _ResizeBatch:
    """Kept frames resized `size` at a time (one `resize_frames` call per batch rather than per frame: fewer
    thread-pool barriers, which dominate on a busy machine), then handed to `sink(slots, frame, num_slots)`. A frame
    whose size differs from `shape` (a resolution change mid-stream) is first resized to it. Holds at most `size`
    decoded frames."""

    def __init__(self, sink, target, num_slots: int, shape, size: int = 4):
        self.sink, self.target, self.num_slots, self.shape, self.size = sink, tuple(target), num_slots, tuple(shape), size
        self.buffer: np.ndarray | None = None
        self.slots: list[list[int]] = []

    def add(self, slots: list[int], array: np.ndarray) -> None:
        if array.shape[:2] != self.shape:
            array = resize_frames(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None], self.shape)
            array = array[0].permute(1, 2, 0).numpy()
        if self.target == self.shape:
            self.sink(slots, np.ascontiguousarray(array), self.num_slots)
            return
        if self.buffer is None:
            self.buffer = np.empty((self.size, *array.shape), dtype=array.dtype)
        self.buffer[len(self.slots)] = array  # also makes PyAV's padded rows contiguous (the fast uint8 kernel)
        self.slots.append(slots)
        if len(self.slots) == self.size:
            self.flush()

    def flush(self) -> None:
        if not self.slots:
            return
        frames = torch.from_numpy(self.buffer[: len(self.slots)]).permute(0, 3, 1, 2)
        resized = resize_frames(frames, self.target).permute(0, 2, 3, 1).numpy()  # [n, h, w, 3] contiguous
        for slots, frame in zip(self.slots, resized):
            self.sink(slots, frame, self.num_slots)
        self.slots = []


def load_video(
    source,
    fps: float | None = DEFAULT_FPS,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    nframes: int | None = None,
    video_start: float | None = None,
    video_end: float | None = None,
    source_fps: float | None = None,
    resize_to: tuple[int, int] | Callable[[int, int, int], tuple[int, int]] | None = None,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    frame_sink: Callable[[list[int], np.ndarray, int], None] | None = None,
) -> tuple[np.ndarray | None, VideoMetadata]:
    """Decode and sample a video with PyAV (SPEC §7). No torchvision, torchcodec or decord.

    Args:
        source: a local path, `file://` URL, http(s) URL (downloaded once to a temporary file), any other URL PyAV
            opens (rtsp://...), a list of frame image paths, a list of PIL images, or a numpy array / torch tensor
            [T, H, W, C] or [T, C, H, W] (uint8, or floats taken as 0-255 values).
        fps: target frames per second of video; `None` keeps every frame up to `max_frames`.
        min_frames, max_frames: bounds on the sampled count (before padding).
        nframes: exact number of frames instead of `fps` (qwen-vl-utils' `nframes`, transformers' `num_frames`).
        video_start, video_end: seconds; sample only inside this window (timestamps stay relative to the clip start).
        source_fps: frame rate of in-memory frames (arrays, frame lists). `None`: they are taken as already sampled
            at `fps` (qwen-vl-utils' convention), so all are kept up to `max_frames`. Ignored for files.
        resize_to: (height, width), or a callable (num_sampled_frames, height, width) -> (height, width) on the
            displayed size; each kept frame is resized right after decoding (bicubic, antialiased, the processor's
            video kernel) so memory holds only T frames at the target size.
        temporal_patch_size: the frame count is padded (repeating the last frame) to a multiple of this.
        frame_sink: for files, `frame_sink(slots, frame, num_slots)` receives each kept frame (uint8 [h, w, 3],
            oriented and resized, to be placed at the frame positions `slots` of `num_slots`) as soon as it is
            decoded, and no frames are collected: the returned frames are `None` (the processor streams frames into
            `pixel_values_videos` this way).

    Returns:
        frames: uint8 numpy array [T, H, W, 3], T a multiple of `temporal_patch_size`, presentation order, display
            orientation applied (a portrait phone clip comes out portrait).
        metadata: `VideoMetadata` (source fps, total frames, duration in seconds, sampled indices, timestamps in
            seconds, strictly increasing except for the padding repeat).

    Raises:
        FileNotFoundError: a local path that does not exist (the message names it).
        VideoLoadError (a ValueError): empty file, no video stream, zero frames, undecodable/corrupt data, failed
            download; the message names the file or URL and the reason.
        ImportError: PyAV is not installed and a file must be decoded.
        ValueError: a setting out of range (`fps` <= 0, `max_frames` < 1, `video_start` > `video_end`, ...); the
            message names the setting, the value and the allowed range.

    Warns:
        TruncatedVideoWarning: the file holds clearly less than its container declares (a partial download); the
            frames present are used. `warnings.simplefilter("error", TruncatedVideoWarning)` makes it an error.

    Decoding reads the file twice: a demux-only pass lists every frame's presentation timestamp (cheap, no
    decoding), then a decode pass keeps only the sampled frames. Variable frame rate clips are sampled uniformly in
    time (see `VideoMetadata.variable_frame_rate`).
    """
    settings = {
        "fps": fps, "min_frames": min_frames, "max_frames": max_frames, "nframes": nframes,
        "temporal_patch_size": temporal_patch_size,
    }  # fmt: skip
    _check_video_settings({**settings, "video_start": video_start, "video_end": video_end, "source_fps": source_fps})
    if _is_frame_collection(source):
        return _load_frames_in_memory(source, settings, source_fps, resize_to, video_start, video_end)

    av = _import_av()
    label = os.fspath(source)
    path, remote = _resolve_source(source)
    tmpdir = None
    try:
        if remote and path.lower().startswith(("http://", "https://")):
            tmpdir = tempfile.mkdtemp(prefix="internvideo3-video-")
            path = _download(path, tmpdir)
            if os.path.getsize(path) == 0:
                raise VideoLoadError(f"cannot decode video {label!r}: the download is empty (0 bytes)")

        all_pts, time_base, rate, stream_index, numbered, keyframes = _presentation_pts(av, path, label)
        _warn_if_truncated(av, path, label, all_pts, time_base, rate)
        first = all_pts[0]
        # exact rational -> float once, so CFR times equal transformers' idx / fps bit for bit
        times = np.array([(p - first) * time_base.numerator / time_base.denominator for p in all_pts])
        window = _time_window(times, video_start, video_end, f"cannot decode video {label!r}")
        local, stamps, n, vfr, rate = _choose_frames(times[window], rate, settings)
        indices = window[local]

        wanted: dict[int, list[int]] = {}
        for slot, index in enumerate(indices.tolist()):
            wanted.setdefault(all_pts[index], []).append(slot)
        collect = frame_sink is None
        sink = _FrameCollector() if collect else frame_sink
        frames, seen, rotation, shape, target = _decode_selected(
            av, path, label, stream_index, wanted, len(indices), resize_to, n, all_pts, numbered, sink,
            keyframes=keyframes,
        )
        if not seen:
            raise VideoLoadError(f"cannot decode video {label!r}: no frame could be decoded")
        if not all(frames):
            # the decoder dropped some listed frames: take the nearest decoded ones (a third, rare pass)
            decoded = np.array(sorted(set(seen)))
            remap: dict[int, list[int]] = {}
            for slot, index in enumerate(indices.tolist()):
                if frames[slot]:
                    continue
                p = all_pts[index]
                j = int(np.clip(np.searchsorted(decoded, p), 1, len(decoded) - 1)) if len(decoded) > 1 else 0
                nearest = decoded[j] if abs(decoded[j] - p) < abs(decoded[j - 1] - p) else decoded[j - 1]
                remap.setdefault(int(nearest), []).append(slot)
            again, _, rotation, shape, target = _decode_selected(
                av, path, label, stream_index, remap, len(indices), resize_to, n, all_pts, numbered, sink, shape
            )
            if not all(f or g for f, g in zip(frames, again)):
                raise VideoLoadError(f"cannot decode video {label!r}: sampled frames could not be decoded")
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    video = sink.frames if collect else None
    height, width = shape
    metadata = VideoMetadata(
        total_num_frames=int(window.size),
        fps=rate,
        width=int(width),
        height=int(height),
        frames_indices=[int(i) for i in indices],
        timestamps=[float(t) for t in stamps],
        num_sampled_frames=n,
        source=label,
        rotation=int(round(rotation)),
        resized=target is not None,
        variable_frame_rate=vfr,
    )
    return video, metadata


class _FrameCollector:
    """`load_video`'s default frame sink: kept frames written into one preallocated uint8 [T, h, w, 3] array (no
    list of frames plus a stacked copy)."""

    def __init__(self):
        self.frames: np.ndarray | None = None

    def __call__(self, slots: Sequence[int], frame: np.ndarray, num_slots: int) -> None:
        if self.frames is None:
            self.frames = np.empty((num_slots, *frame.shape), dtype=frame.dtype)
        for slot in slots:
            self.frames[slot] = frame


def _is_frame_collection(source) -> bool:
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return True
    return isinstance(source, (list, tuple)) and len(source) > 0


def _load_frames_in_memory(source, settings, source_fps, resize_to, video_start, video_end):
    is_list = isinstance(source, (list, tuple))
    total = len(source) if is_list else int(source.shape[0])
    if total == 0:
        raise VideoLoadError("cannot use video: it has zero frames")
    rate = float(source_fps) if source_fps else float(settings["fps"] or DEFAULT_FPS)
    times = np.arange(total) / rate
    window = _time_window(times, video_start, video_end, "cannot use video")
    local, n = sample_frame_indices(
        int(window.size), rate, fps=settings["fps"], min_frames=settings["min_frames"],
        max_frames=settings["max_frames"], num_frames=settings["nframes"],
        temporal_patch_size=settings["temporal_patch_size"],
    )  # fmt: skip
    indices = window[local]
    if is_list:
        video = _as_frames([source[i] for i in indices.tolist()])
    else:
        video = _as_frames(source[torch.from_numpy(indices) if isinstance(source, torch.Tensor) else indices])
    if video.dtype != torch.uint8:  # load_video returns uint8: 0-255 floats rounded
        video = video.to(torch.float32).round().clamp(0, 255).to(torch.uint8)
    height, width = video.shape[-2:]
    if resize_to is not None:
        video = resize_frames(video, resize_to(n, height, width) if callable(resize_to) else resize_to)
    metadata = VideoMetadata(
        total_num_frames=int(window.size), fps=rate, width=int(width), height=int(height), video_backend="frames",
        frames_indices=[int(i) for i in indices], timestamps=[float(times[i]) for i in indices],
        num_sampled_frames=n, resized=resize_to is not None,
    )  # fmt: skip
    return np.ascontiguousarray(video.permute(0, 2, 3, 1).numpy()), metadata


def _as_frames(video) -> torch.Tensor:
    """An in-memory video -> tensor [T, 3, H, W], keeping the dtype (uint8, or float32/float64 0-255 values such as
    qwen-vl-utils' frames; other dtypes become float32). Accepts an array/tensor [T, H, W, C] or [T, C, H, W] with C
    in 1 (grey, repeated), 3, 4 (RGBA, composited on white), or a list of frames (paths/URLs, PIL images, arrays
    [H, W, C], [C, H, W] or [H, W]); frames of a list are resized to the first one's size.

    Raises:
        ValueError: an array that is not 4-D.
    """
    if isinstance(video, (list, tuple)):
        frames = [_as_frames(_frame_batch(frame)) for frame in video]
        if len({f.dtype for f in frames}) > 1:
            frames = [f.to(torch.float32) for f in frames]
        return torch.cat([resize_frames(f, frames[0].shape[-2:]) for f in frames])
    tensor = video if isinstance(video, torch.Tensor) else torch.from_numpy(np.asarray(video))
    if tensor.ndim != 4:
        raise ValueError(f"a video must be 4-D [T, H, W, C] or [T, C, H, W], got shape {tuple(tensor.shape)}")
    if tensor.shape[1] not in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.dtype not in (torch.uint8, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    elif tensor.shape[1] == 4:  # composited on white, as `_to_rgb` does for PIL images
        rgb, alpha = tensor[:, :3].to(torch.float32), tensor[:, 3:].to(torch.float32) / 255.0
        tensor = (rgb * alpha + 255.0 * (1.0 - alpha)).round().clamp(0, 255).to(torch.uint8)
    return tensor


def _frame_batch(frame):
    """One frame (path/URL, PIL image, array/tensor [H, W, C], [C, H, W] or [H, W]) -> a one-frame 4-D batch."""
    if isinstance(frame, (str, os.PathLike)):
        frame = load_image(frame)
    if isinstance(frame, Image.Image):
        frame = np.array(_to_rgb(frame))
    tensor = frame if isinstance(frame, torch.Tensor) else torch.from_numpy(np.asarray(frame))
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"an image or video frame must be 2-D or 3-D, got shape {tuple(tensor.shape)}")
    return tensor[None]


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as transformers' `convert_to_rgb` and qwen-vl-utils)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source) -> Image.Image:
    """Open an image (path, `file://` / http(s) URL, base64 data URL, PIL image) as an RGB PIL image.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: the data is not an image.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    source = os.fspath(source)
    if source.startswith("file://"):
        source = source[len("file://") :]
    if not re.match(r"^(https?://|data:)", source) and not os.path.exists(source):
        raise FileNotFoundError(f"image file not found: {source!r}")
    from transformers.image_utils import load_image as hf_load_image  # noqa: PLC0415

    try:
        image = hf_load_image(source)
    except Exception as error:
        raise ValueError(f"cannot open image {source!r}: {error}") from error
    return _to_rgb(image)


# ---------------------------------------------------------------------------------------------------------------
# Pixel processing (SPEC §6-7)
# ---------------------------------------------------------------------------------------------------------------
def resize_frames(frames: torch.Tensor, size: tuple[int, int], backend: str = "torch") -> torch.Tensor:
    """Bicubic, antialiased resize of frames [T, C, H, W] to `size` = (height, width) pixels.

    backend "torch": `torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)` on the input dtype -
    exactly what torchvision's `resize` runs on CPU (native uint8 kernel for uint8, float kernel for floats), hence
    what transformers' `Qwen3VLVideoProcessor`, its fast image processors and qwen-vl-utils produce.
    backend "pil": PIL `Image.resize(..., BICUBIC)` per frame (uint8 only), as transformers' PIL/slow Qwen2-VL image
    processor and qwen-vl-utils' `fetch_image`. The two differ by at most a few uint8 levels on ~0.1% of values.
    Returns a tensor of the input dtype; the input itself when the size is unchanged.
    """
    height, width = int(size[0]), int(size[1])
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    if backend == "pil":
        if frames.dtype != torch.uint8:
            raise ValueError("the PIL resize backend needs uint8 frames")
        out = [
            np.asarray(Image.fromarray(f.permute(1, 2, 0).numpy()).resize((width, height), Image.Resampling.BICUBIC))
            for f in frames
        ]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    if backend != "torch":
        raise ValueError(f"unknown resize backend {backend!r}: use 'torch' or 'pil'")
    if frames.dtype not in (torch.uint8, torch.float32, torch.float64):
        frames = frames.float()
    return F.interpolate(frames, size=[height, width], mode="bicubic", align_corners=False, antialias=True)


class _PatchWriter:
    """Frames -> `pixel_values_videos` / `pixel_values` rows (SPEC §6, §7); the preallocated float32 output is the
    only float copy.

    Rows are [grid_t*grid_h*grid_w, C*tp*P*P] (tp = temporal_patch_size, P = patch_size: 3·2·16·16 = 1536 values),
    ordered (grid_t, grid_h/merge, grid_w/merge, merge, merge) so each 2×2 merge block is contiguous, each row flattened
    (C, tp, P, P); a frame count that is not a multiple of tp is padded by the caller (an image is one frame written
    tp times). Each complete temporal group is gathered, still uint8, into patch order in a one-group staging buffer;
    then `(x - mean/rescale) / (std/rescale)` writes it into its output rows, the division running on rows still in
    cache. These are transformers' float32 operations (its fused rescale+normalise, IEEE subtraction and division,
    correctly rounded in numpy as in torch), so the rows are bit-identical to `Qwen3VLVideoProcessor` and the Qwen2-VL
    image processor. numpy, not torch: per-group torch calls each cross a thread-pool barrier, which on a busy
    machine costs more than the work (bench/bench_preprocess.py). Memory: the output plus one group of frames at
    the target size, so a long clip never exists as a whole in uint8 or in float.
    """

    def __init__(self, mean, std, patch_size, merge_size, temporal_patch_size, rescale: float = 1 / 255):
        # as transformers computes them (float32 mean / rescale), for equal bits
        self.mean = (torch.tensor(mean, dtype=torch.float32) * (1.0 / rescale)).numpy()[:, None]
        self.std = (torch.tensor(std, dtype=torch.float32) * (1.0 / rescale)).numpy()[:, None]
        self.p, self.m, self.tp = patch_size, merge_size, temporal_patch_size
        self.rows: torch.Tensor | None = None
        self.prefault: threading.Thread | None = None
        self.stage: np.ndarray | None = None
        self.grid: list[int] = []
        self.pending: dict[int, dict[int, np.ndarray]] = {}
        self.done: set[int] = set()

    def __call__(self, slots: Sequence[int], frame, num_slots: int) -> None:
        """Place one frame (numpy [H, W, C] or tensor [C, H, W]; uint8, or 0-255 floats) at each frame position in
        `slots`, of `num_slots` positions in all (a multiple of `temporal_patch_size`; the caller pads)."""
        hwc = frame if isinstance(frame, np.ndarray) else frame.permute(1, 2, 0).numpy()
        if self.rows is None:
            h, w, c = hwc.shape
            if h % (self.p * self.m) or w % (self.p * self.m):
                raise ValueError(f"frame size {h}x{w} is not a multiple of {self.p * self.m}")
            if num_slots % self.tp:
                raise ValueError(f"{num_slots} frames is not a multiple of temporal_patch_size={self.tp}")
            self.grid = [num_slots // self.tp, h // self.p, w // self.p]
            self.rows = torch.empty(math.prod(self.grid), c * self.tp * self.p**2, dtype=torch.float32)
            self.prefault = _prefault(self.rows)
            # uint8 stays uint8 up to the float pass; other dtypes become float32 first, as transformers does
            dtype = np.uint8 if hwc.dtype == np.uint8 else np.float32
            gh, gw, m, p = self.grid[1], self.grid[2], self.m, self.p
            self.stage = np.empty((gh // m, gw // m, m, m, c, self.tp, p, p), dtype)
        for slot in slots:
            group = self.pending.setdefault(slot // self.tp, {})
            group[slot % self.tp] = hwc
            if len(group) == self.tp:
                self._write(slot // self.tp, [group[t] for t in range(self.tp)])
                del self.pending[slot // self.tp]

    def _write(self, index: int, frames: list[np.ndarray]) -> None:
        _, gh, gw = self.grid
        p, m = self.p, self.m
        for t, hwc in enumerate(frames):
            # (h, w, c) -> (gh/m, gw/m, m, m, c, p, p): the row order of `patchify`
            self.stage[:, :, :, :, :, t] = hwc.reshape(gh // m, m, p, gw // m, m, p, -1).transpose(0, 3, 1, 4, 6, 2, 5)
        c = self.stage.shape[4]
        block = self.rows[index * gh * gw : (index + 1) * gh * gw].numpy().reshape(gh * gw, c, -1)
        np.subtract(self.stage.reshape(gh * gw, c, -1), self.mean, out=block)
        np.divide(block, self.std, out=block)
        self.done.add(index)

    def result(self) -> tuple[torch.Tensor, list[int]]:
        """(rows [grid_t*grid_h*grid_w, C*tp*P*P] float32, [grid_t, grid_h, grid_w]). Raises ValueError when some
        frame position never received a frame."""
        if self.rows is None or self.pending or len(self.done) != self.grid[0]:
            raise ValueError("internal error: some video frames were never decoded")
        if self.prefault is not None:
            self.prefault.join()
        return self.rows, self.grid


def _prefault(tensor: torch.Tensor, min_bytes: int = 1 << 26) -> threading.Thread | None:
    """Fault in the pages of a fresh `tensor` (>= `min_bytes`) on another thread, leaving its contents alone (Linux
    `madvise(MADV_POPULATE_WRITE)`, kernel >= 5.14; elsewhere nothing happens). Why: the first touch of a ~0.5 GB
    `pixel_values_videos` costs 0.2-0.3 s of page faults (bench/RESULTS.md), which would otherwise fall on the
    thread writing the rows; here they overlap decoding. Returns the thread (join before relying on it) or None."""
    size = tensor.numel() * tensor.element_size()
    if size < min_bytes or not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-tensor.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor
    end = (tensor.data_ptr() + size) // mmap.PAGESIZE * mmap.PAGESIZE
    thread = threading.Thread(target=madvise, args=(start, end - start, 23), daemon=True)  # 23: MADV_POPULATE_WRITE
    thread.start()
    return thread


def _check_not_empty(video, index: int):
    """`video` unchanged; VideoLoadError naming the video's position and shape when it has no frame or no pixel
    (a [0, H, W, C] array would otherwise end in a division by zero deep in resizing)."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise VideoLoadError(f"video {index} has zero frames (an empty frame list)")
        return video
    shape = tuple(getattr(video, "shape", ()))
    if len(shape) == 4 and 0 in shape:
        raise VideoLoadError(f"video {index} has {'zero frames' if shape[0] == 0 else 'empty frames'}: shape {shape}")
    return video


def _metadata_field(meta, key: str):
    """`key` of any metadata flavour (ours, transformers' `VideoMetadata`, qwen-vl-utils' dict); None when absent."""
    if meta is None:
        return None
    if isinstance(meta, dict):
        return meta.get(key)
    try:
        return getattr(meta, key)
    except Exception:  # transformers' VideoMetadata.timestamps raises without fps
        return None


def _frames_need_sampling(meta, num_frames: int) -> bool:
    """Whether `num_frames` in-memory frames given with `meta` are their source's frames at its own rate, to be
    sampled at the requested `fps` (transformers' `Qwen3VLVideoProcessor` samples by default,
    `do_sample_frames=True`), rather than frames sampled already. Already sampled: no metadata or no source `fps`
    (qwen-vl-utils < 0.0.14 passes sampled frames with `fps=[...]` only), `load_video`'s own metadata, or
    `frames_indices` naming a selection of the source frames (qwen-vl-utils' metadata dicts); qwen-vl-utils 0.0.14
    also passes `do_sample_frames=False`, which decides before this is asked."""
    if not _metadata_field(meta, "fps"):
        return False
    if isinstance(meta, VideoMetadata) and meta.num_sampled_frames:
        return False
    indices = _metadata_field(meta, "frames_indices")
    if indices is None:
        return True
    indices = indices.tolist() if hasattr(indices, "tolist") else list(indices)
    total = _metadata_field(meta, "total_num_frames")
    return indices == list(range(num_frames)) and (total is None or int(total) == num_frames)


def _metadata_timestamps(meta, num_frames: int, default_fps: float) -> list[float]:
    """Per-frame seconds from any metadata flavour: ours (`timestamps`), transformers' `VideoMetadata`
    (frames_indices / fps), qwen-vl-utils' dict (`fps`, `frames_indices`), or none (frames taken at `default_fps`)."""

    def read(key):
        return _metadata_field(meta, key)

    stamps = read("timestamps") if isinstance(meta, VideoMetadata) else None
    if not stamps:
        fps = read("fps") or default_fps
        indices = read("frames_indices")
        if indices is None:
            indices = list(range(num_frames))
        indices = indices.tolist() if hasattr(indices, "tolist") else list(indices)
        stamps = [float(i) / float(fps) for i in indices]
    stamps = list(stamps)
    if len(stamps) > num_frames:
        raise ValueError(f"video metadata lists {len(stamps)} frames but the video has {num_frames}")
    # frames padded after the metadata was made (odd counts): repeat the last time, as transformers does
    stamps += [stamps[-1]] * (num_frames - len(stamps)) if stamps else [0.0] * num_frames
    return stamps


# ---------------------------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------------------------
class InternVideo3Processor(ProcessorMixin):
    r"""Tokenizer (Qwen2/Qwen3 BPE) + image/video preprocessing + chat template for InternVideo3 (SPEC §7).

    Args:
        tokenizer: a Qwen2 tokenizer (`Qwen2Tokenizer` / `Qwen2TokenizerFast`).
        chat_template: jinja template; default `CHAT_TEMPLATE` (Qwen3-VL layout with `enable_thinking`, tools,
            `add_vision_id` labels).
        fps, min_frames, max_frames: frame sampling of videos (frames per second of video, frame counts).
        video_budget: "per_frame" (default; qwen-vl-utils: `min_pixels`/`max_pixels` per frame, `total_pixels` for
            the clip) or "total" (transformers' `Qwen3VLVideoProcessor`: `size` bounds T×H×W). See the module doc.
        min_pixels, max_pixels, total_pixels: pixel budgets of "per_frame" (defaults 131,072 / 786,432 /
            117,964,800, i.e. 128-768 tokens per frame, ~115K tokens per clip). `min_pixels` / `max_pixels` given
            here also bound images (as Qwen2-VL/Qwen3-VL processors do) unless `image_min_pixels` /
            `image_max_pixels` are given too. A bound given alone beyond the other's default wins: the default
            yields (`max_pixels=32768` alone sets `min_pixels` to 32,768 / 1.05 for videos, 32,768 for images); both
            given and in conflict raise.
        size: {"shortest_edge", "longest_edge"} of "total", in pixels of the T×H×W volume (default 4,096 /
            25,165,824, transformers' Qwen3-VL release).
        image_min_pixels, image_max_pixels: per-image pixel bounds (default 65,536 / 16,777,216, Qwen3-VL release).

    Settings merge in one order, each level replacing the keys it sets: defaults < processor (these arguments,
    processor_config.json) < call (keyword arguments of `__call__` / `apply_chat_template`) < item (keys on one
    image/video item of a message). On one level an image-only name beats the shared one (`image_max_pixels` over
    `max_pixels`); across levels the more specific level wins (an item's `max_pixels` beats a call's
    `image_max_pixels`). Pixel bounds in conflict (min > max) from different levels: the less specific one yields.
        patch_size, temporal_patch_size, merge_size: vision tower geometry (16, 2, 2).
        image_mean, image_std: normalization (0.5, 0.5, 0.5).
        image_resize_backend: "pil" (default, = transformers' PIL image processor) or "torch".
        video_resize_backend: "torch" (default, = transformers' `Qwen3VLVideoProcessor` / torchvision) or "pil".
        padding_side: "left" (default, for batched generation) or "right".

    `__call__` returns `input_ids`, `attention_mask`, and when given `pixel_values` [N_img_patches, 1536] float32,
    `image_grid_thw` [n_images, 3], `pixel_values_videos` [N_vid_patches, 1536] float32, `video_grid_thw`
    [n_videos, 3] (t, h, w patch grid before the 2×2 merge; a video costs t·h·w/4 `<|video_pad|>` tokens).
    """

    # transformers 4.57 reads `attributes` / `tokenizer_class`; 5.x infers the sub-processors from `__init__`.
    attributes = ["tokenizer"]
    tokenizer_class = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
    # save_pretrained writes auto_map {"AutoProcessor": "processing_internvideo3.InternVideo3Processor"} and this file.
    _auto_class = "AutoProcessor"
    # remote code lives in a generated module: `processor.TruncatedVideoWarning` reaches the class for warning filters
    TruncatedVideoWarning = TruncatedVideoWarning

    def __init__(
        self,
        tokenizer=None,
        chat_template=None,
        fps: float = DEFAULT_FPS,
        min_frames: int = DEFAULT_MIN_FRAMES,
        max_frames: int = DEFAULT_MAX_FRAMES,
        video_budget: str = "per_frame",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        total_pixels: int = VIDEO_TOTAL_PIXELS,
        size: dict | None = None,
        image_min_pixels: int | None = None,
        image_max_pixels: int | None = None,
        patch_size: int = PATCH_SIZE,
        temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
        merge_size: int = MERGE_SIZE,
        image_mean: Sequence[float] = IMAGE_MEAN,
        image_std: Sequence[float] = IMAGE_STD,
        image_resize_backend: str = "pil",
        video_resize_backend: str = "torch",
        padding_side: str = "left",
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"InternVideo3Processor got unexpected arguments: {sorted(kwargs)}")
        if video_budget not in ("per_frame", "total"):
            raise ValueError(f"video_budget must be 'per_frame' or 'total', got {video_budget!r}")
        self.fps = fps
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.video_budget = video_budget
        # `None`: not given, the default applies (and yields to a given bound it conflicts with)
        given = _given({"min_pixels": min_pixels, "max_pixels": max_pixels})
        image_given = _given({**given, "image_min_pixels": image_min_pixels, "image_max_pixels": image_max_pixels})
        self.min_pixels, self.max_pixels = _resolve_bounds(
            [given], ("min_pixels",), ("max_pixels",), (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS),
            yielded_low=_yielded_min_pixels,
        )  # fmt: skip
        self.total_pixels = total_pixels
        self.size = dict(size) if size is not None else dict(VIDEO_SIZE)
        self.image_min_pixels, self.image_max_pixels = _resolve_bounds(
            [image_given], ("image_min_pixels", "min_pixels"), ("image_max_pixels", "max_pixels"),
            (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS),
        )  # fmt: skip
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.image_resize_backend = image_resize_backend
        self.video_resize_backend = video_resize_backend
        self.padding_side = padding_side
        super().__init__(tokenizer, chat_template=chat_template if chat_template is not None else CHAT_TEMPLATE)
        self.image_token, self.video_token = IMAGE_PAD, VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(VISION_START)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(VISION_END)
        # a bad value in processor_config.json fails at load time, naming the setting
        _check_video_settings(
            {**self._video_settings(), **self._image_settings()},
            explicit=("min_frames", "min_pixels", "max_pixels", "image_min_pixels", "image_max_pixels"),
        )

    # ---- settings ------------------------------------------------------------------------------------------
    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"]

    def _video_settings(self, *levels: dict | None) -> _Settings:
        """The processor's video settings updated by `levels` (call-level keys, then one item's keys; `None` values
        are not set), merged in the documented order (class doc) and validated once.

        The budget is chosen by the most specific level that names one: its `video_budget`, else "total" for a
        `size`, else "per_frame" for `min_pixels` / `max_pixels` / `total_pixels` (so an item's `max_pixels` beats a
        call's `size`). Raises ValueError naming the setting (see `_check_video_settings`).
        """
        processor = {
            "fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames,
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "total_pixels": self.total_pixels,
            "size": dict(self.size), "video_budget": self.video_budget,
        }  # fmt: skip
        levels = [_given(level) for level in levels]
        settings = dict(processor)
        for level in levels:
            settings.update(level)
        for level in reversed(levels):
            if "video_budget" in level:
                break
            if "size" in level:
                settings["video_budget"] = "total"
                break
            if any(k in level for k in ("min_pixels", "max_pixels", "total_pixels")):
                settings["video_budget"] = "per_frame"
                break
        if settings["video_budget"] not in ("per_frame", "total"):
            raise ValueError(f"video_budget must be 'per_frame' or 'total', got {settings['video_budget']!r}")
        settings["min_pixels"], settings["max_pixels"] = _resolve_bounds(
            [processor, *levels], ("min_pixels",), ("max_pixels",), (None, None),
            yielded_low=_yielded_min_pixels,
        )  # fmt: skip
        _check_video_settings(settings, explicit={k for level in levels for k in level})
        return _Settings(settings)

    def _image_settings(self, *levels: dict | None) -> _Settings:
        """Image bounds {"image_min_pixels", "image_max_pixels", "resized_height", "resized_width"} of the processor
        updated by `levels` (call, then item), merged in the documented order (class doc) and validated once.
        Raises ValueError naming the setting."""
        levels = [_given(level) for level in levels]
        processor = {"image_min_pixels": self.image_min_pixels, "image_max_pixels": self.image_max_pixels}
        low, high = _resolve_bounds(
            [processor, *levels], ("image_min_pixels", "min_pixels"), ("image_max_pixels", "max_pixels"), (None, None)
        )
        settings = {"image_min_pixels": low, "image_max_pixels": high}
        for level in levels:
            settings.update({k: level[k] for k in ("resized_height", "resized_width") if k in level})
        _check_video_settings(settings)
        return _Settings(settings)

    def video_target_size(self, num_frames: int, height: int, width: int, settings: dict | None = None) -> tuple[int, int]:
        """Resized (height, width) in pixels for a clip of `num_frames` sampled frames (before padding) of
        `height`×`width` under `settings` (call-level keys, or settings merged by the processor; see the module doc
        for the two budgets)."""
        s = settings if isinstance(settings, _Settings) else self._video_settings(settings)
        factor = self.patch_size * self.merge_size
        if s.get("resized_height") and s.get("resized_width"):
            # qwen-vl-utils: an explicit size is only rounded to the factor
            return smart_resize(s["resized_height"], s["resized_width"], factor, 4 * factor**2, 16384 * factor**2)
        if s["video_budget"] == "total":
            if height < factor or width < factor:  # scaled up first, as transformers 5.x does (4.57 raises)
                scale = max(factor / height, factor / width)
                height, width = int(height * scale), int(width * scale)
            return _smart_resize_volume(
                max(num_frames, self.temporal_patch_size), height, width, self.temporal_patch_size, factor,
                s["size"]["shortest_edge"], s["size"]["longest_edge"],
            )  # fmt: skip
        nframes = num_frames + (-num_frames % self.temporal_patch_size)
        # qwen-vl-utils fetch_video: each frame gets at most its share of total_pixels (2 frames share a patch), with
        # its per-frame rule, which is the image rule (identical for every frame with both sides >= factor / 2)
        max_pixels = max(
            min(s["max_pixels"], s["total_pixels"] / nframes * self.temporal_patch_size),
            int(s["min_pixels"] * FRAME_PIXELS_SLACK),
        )
        return smart_resize(height, width, factor, s["min_pixels"], max_pixels)

    def image_target_size(self, height: int, width: int, settings: dict | None = None) -> tuple[int, int]:
        """Resized (height, width) in pixels for an image (transformers' Qwen2-VL/Qwen3-VL rule) under `settings`
        (call-level keys `image_min_pixels` / `image_max_pixels` / `min_pixels` / `max_pixels` / `resized_height` /
        `resized_width`, or settings merged by the processor)."""
        s = settings if isinstance(settings, _Settings) else self._image_settings(settings)
        factor = self.patch_size * self.merge_size
        if s.get("resized_height") and s.get("resized_width"):
            return smart_resize(s["resized_height"], s["resized_width"], factor, 4 * factor**2, 16384 * factor**2)
        return smart_resize(height, width, factor, s["image_min_pixels"], s["image_max_pixels"])

    # ---- vision inputs -------------------------------------------------------------------------------------
    def load_video(self, source, frame_sink=None, resize=True, **settings) -> tuple[np.ndarray | None, VideoMetadata]:
        """`load_video` with this processor's sampling defaults, frames resized during decoding to the budget size
        (so a long video never holds full-resolution frames; `resize=False` keeps the decoded size). Keys: see
        `VIDEO_SETTING_KEYS`; `frame_sink`: see `load_video`."""
        return self._load_video(source, self._video_settings(settings), frame_sink, resize)

    def _load_video(self, source, s: _Settings, frame_sink=None, resize=True, source_fps=None):
        """`load_video` under settings merged by `_video_settings`."""
        return load_video(
            source,
            fps=s["fps"],
            min_frames=s["min_frames"],
            max_frames=s["max_frames"],
            nframes=s.get("nframes", s.get("num_frames")),
            video_start=s.get("video_start"),
            video_end=s.get("video_end"),
            source_fps=source_fps or s.get("source_fps"),
            resize_to=(lambda n, h, w: self.video_target_size(n, h, w, s)) if resize else None,
            temporal_patch_size=self.temporal_patch_size,
            frame_sink=frame_sink,
        )

    def _patch_writer(self) -> _PatchWriter:
        return _PatchWriter(self.image_mean, self.image_std, self.patch_size, self.merge_size, self.temporal_patch_size)

    def _process_videos(self, videos: list, metadata: list, settings: list[dict], do_sample_frames, do_resize=True):
        rows, grids, stamps = [], [], []
        factor = self.patch_size * self.merge_size
        for video, meta, s in zip(videos, metadata, settings):
            _check_not_empty(video, len(rows))
            writer = self._patch_writer()
            if isinstance(video, (str, os.PathLike)):
                # a file: frames stream from the decoder, resized (torch kernel, whatever the backend), straight into
                # the output rows: one float pass, no uint8 or float copy of the whole clip
                _, meta = self._load_video(video, s, frame_sink=writer, resize=do_resize is not False)
                patches, grid = writer.result()
                stamp = _metadata_timestamps(meta, grid[0] * self.temporal_patch_size, s.get("fps") or self.fps)
            else:
                if isinstance(video, (list, tuple)) and video and isinstance(video[0], (str, os.PathLike)):
                    video, meta = self._load_video(video, s)  # frame image files
                elif do_sample_frames or (do_sample_frames is None and _frames_need_sampling(meta, len(video))):
                    video, meta = self._load_video(video, s, source_fps=_metadata_field(meta, "fps"))
                frames = _as_frames(video)
                num = frames.shape[0]
                stamp = _metadata_timestamps(meta, num, s.get("fps") or self.fps)
                sampled = meta.num_sampled_frames if isinstance(meta, VideoMetadata) and meta.num_sampled_frames else num
                height, width = frames.shape[-2:]
                already = isinstance(meta, VideoMetadata) and meta.resized and height % factor == 0 == width % factor
                if not already and do_resize is not False:
                    target = self.video_target_size(sampled, height, width, s)
                    frames = resize_frames(frames, target, self.video_resize_backend)
                slots = num + (-num % self.temporal_patch_size)
                for i, frame in enumerate(frames):
                    writer([i] if i < num - 1 else list(range(i, slots)), frame, slots)
                patches, grid = writer.result()
            rows.append(patches)
            grids.append(grid)
            stamps.append(group_timestamps(stamp, self.temporal_patch_size))
        # one video (the usual request): its rows are the output, no copy of the whole clip
        pixel_values = rows[0] if len(rows) == 1 else torch.cat(rows)
        return pixel_values, torch.tensor(grids, dtype=torch.long), stamps

    def _process_images(self, images: list, settings: list[dict], do_resize=True):
        rows, grids = [], []
        for image, s in zip(images, settings):
            tensor = _as_frames([image])
            if do_resize is not False:
                target = self.image_target_size(*tensor.shape[-2:], s)
                backend = self.image_resize_backend if tensor.dtype == torch.uint8 else "torch"
                tensor = resize_frames(tensor, target, backend)
            writer = self._patch_writer()
            writer(range(self.temporal_patch_size), tensor[0], self.temporal_patch_size)  # one frame, tp times
            patches, grid = writer.result()
            rows.append(patches)
            grids.append(grid)
        return torch.cat(rows), torch.tensor(grids, dtype=torch.long)

    # ---- prompt expansion ----------------------------------------------------------------------------------
    def _expand_text(self, texts: list[str], image_grids, video_grids, video_stamps) -> list[str]:
        """Replace each image/video placeholder by its tokens (SPEC §7). Raises ValueError on a count mismatch."""
        merge = self.merge_size**2
        video_pattern = re.compile(re.escape(VISION_START + VIDEO_PAD + VISION_END) + "|" + re.escape(VIDEO_PAD))
        n_video_slots = sum(len(video_pattern.findall(t)) for t in texts)
        n_videos = 0 if video_grids is None else len(video_grids)
        if n_video_slots != n_videos:
            raise ValueError(f"the text has {n_video_slots} video placeholders but {n_videos} videos were given")
        n_image_slots = sum(t.count(IMAGE_PAD) for t in texts)
        n_images = 0 if image_grids is None else len(image_grids)
        if n_image_slots != n_images:
            raise ValueError(f"the text has {n_image_slots} image placeholders but {n_images} images were given")

        counter = {"image": 0, "video": 0}

        def video_tokens(_match) -> str:
            i = counter["video"]
            counter["video"] += 1
            t, h, w = (int(v) for v in video_grids[i])
            pads = VIDEO_PAD * (h * w // merge)
            return "".join(f"<{video_stamps[i][g]:.1f} seconds>{VISION_START}{pads}{VISION_END}" for g in range(t))

        def image_tokens(_match) -> str:
            i = counter["image"]
            counter["image"] += 1
            return IMAGE_PAD * (int(image_grids[i].prod()) // merge)

        out = []
        for text in texts:
            text = video_pattern.sub(video_tokens, text)
            out.append(re.sub(re.escape(IMAGE_PAD), image_tokens, text))
        return out

    # ---- public entry points -------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, videos=None, **kwargs) -> BatchFeature:
        """Tokenize `text` with expanded vision placeholders and preprocess `images` / `videos`.

        Args:
            images: an image or a list (PIL, path/URL, array/tensor [H,W,C] or [C,H,W]); nested per-sample lists are
                flattened in order.
            text: a string or a list of strings containing `<|vision_start|><|image_pad|><|vision_end|>` /
                `<|vision_start|><|video_pad|><|vision_end|>` (or a bare pad) once per image / video, in order.
            videos: a video or a list: path/URL (decoded and sampled with PyAV), a 4-D array/tensor [T,H,W,C] or
                [T,C,H,W], or a list of frames. Given with metadata naming the source `fps` (and no
                `frames_indices` selection), in-memory frames are sampled at `fps` as transformers'
                `Qwen3VLVideoProcessor` does; frames without metadata, with our `load_video`'s metadata or with
                qwen-vl-utils' (`process_vision_info` outputs) are used as given. A list of strings is a list of
                video files; wrap frame paths of one video in a list: `[[f0, f1, ...]]`.
            video_metadata: one per video (ours, transformers' `VideoMetadata`, or qwen-vl-utils' dict with `fps`,
                `frames_indices`) for timestamps; without it in-memory frames are taken at `fps` frames per second.
                The Qwen3-VL model card's qwen-vl-utils call works as is: `videos, video_metadata = zip(*videos)` of
                `process_vision_info(..., return_video_kwargs=True, return_video_metadata=True)`, then
                `processor(text=..., videos=..., video_metadata=..., do_resize=False, **video_kwargs)`.
            do_sample_frames: True samples in-memory frames with the budget below, False uses them as given
                (qwen-vl-utils' `video_kwargs` pass False); default: sampled when the metadata says they are the
                source's frames at its own rate (see `videos`).
            do_resize: False keeps frames and images at their size (sides must be multiples of 32); default: resized
                to the budget.
            fps, min_frames, max_frames, nframes/num_frames, video_start, video_end, video_budget, min_pixels,
                max_pixels, total_pixels, size, resized_height, resized_width: video budget for this call (a `fps`
                list gives one value per video).
            image_min_pixels, image_max_pixels: image budget for this call (`min_pixels` / `max_pixels` bound
                images too, unless these are given; merge order: see the class doc).
            padding (default: True for a batch of several texts), padding_side (default "left"), truncation,
                max_length, add_special_tokens, ...: passed to the tokenizer. return_tensors: "pt" (default), "np".

        Returns:
            BatchFeature with `input_ids` [B, S], `attention_mask` [B, S], and when present `pixel_values`
            [N, 1536] float32, `image_grid_thw` [n_images, 3], `pixel_values_videos` [N, 1536] float32,
            `video_grid_thw` [n_videos, 3] (int64).

        Raises:
            ValueError: placeholders and images/videos differ in number, or the tokenized `<|video_pad|>` /
                `<|image_pad|>` count differs from the visual feature count (e.g. truncation); messages name both.
            TypeError: an unknown keyword argument.
            FileNotFoundError, VideoLoadError: see `load_video`.
        """
        return self._encode(images=images, text=text, videos=videos, **kwargs)

    def _encode(
        self,
        images=None,
        text=None,
        videos=None,
        video_metadata=None,
        video_settings: list[dict] | None = None,
        image_settings: list[dict] | None = None,
        return_tensors="pt",
        do_sample_frames=None,
        do_resize=None,
        **kwargs,
    ) -> BatchFeature:
        for key in ("text_kwargs", "videos_kwargs", "images_kwargs"):  # transformers-style grouped kwargs
            kwargs.update(kwargs.pop(key, None) or {})
        kwargs.pop("return_metadata", None)
        call_video = {k: kwargs.pop(k) for k in VIDEO_SETTING_KEYS if k in kwargs}
        call_image = _call_image_settings(call_video, kwargs)
        text_kwargs = {k: kwargs.pop(k) for k in TEXT_KWARGS if k in kwargs}
        if kwargs:
            raise TypeError(f"InternVideo3Processor got unexpected keyword arguments: {sorted(kwargs)}")

        data: dict[str, Any] = {}
        image_grids = video_grids = video_stamps = None
        if images is not None:
            images = _flatten_images(images)
            settings = image_settings or [self._image_settings(call_image)] * len(images)
            data["pixel_values"], image_grids = self._process_images(images, settings, do_resize)
            data["image_grid_thw"] = image_grids
        if videos is not None:
            videos = _as_video_list(videos)
            metadata = _as_list(video_metadata, len(videos), "video_metadata")
            if video_settings is None:
                fps_value = call_video.get("fps")
                video_settings = []
                for i in range(len(videos)):
                    s = dict(call_video)
                    if isinstance(fps_value, (list, tuple)):  # qwen-vl-utils' video_kwargs: one fps per video
                        s["fps"] = fps_value[i]
                    video_settings.append(self._video_settings(s))
            data["pixel_values_videos"], video_grids, video_stamps = self._process_videos(
                videos, metadata, video_settings, do_sample_frames, do_resize
            )
            data["video_grid_thw"] = video_grids

        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            texts = self._expand_text(texts, image_grids, video_grids, video_stamps)
            text_kwargs.setdefault("padding", len(texts) > 1)
            text_kwargs.setdefault("padding_side", self.padding_side)
            encoded = self.tokenizer(texts, return_tensors=return_tensors, **text_kwargs)
            self._check_token_counts(encoded["input_ids"], image_grids, video_grids)
            data.update(encoded)
        if return_tensors == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_token_counts(self, input_ids, image_grids, video_grids) -> None:
        ids = np.concatenate([np.asarray(row).reshape(-1) for row in input_ids]) if len(input_ids) else np.zeros(0)
        merge = self.merge_size**2
        for name, token_id, grids in (("video", self.video_token_id, video_grids), ("image", self.image_token_id, image_grids)):
            expected = 0 if grids is None else int(grids.prod(dim=1).sum()) // merge
            found = int((ids == token_id).sum())
            if found != expected:
                raise ValueError(
                    f"the tokenized text has {found} {name} placeholder tokens but the {name}s give {expected} "
                    f"visual features (truncation or a placeholder typed into the text?)"
                )

    def apply_chat_template(
        self,
        conversation,
        chat_template: str | None = None,
        tools=None,
        documents=None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = True,
        return_tensors="pt",
        **kwargs,
    ):
        """Render messages with the chat template and, with `tokenize=True`, decode every image/video they reference
        (PyAV `load_video`, never transformers' torchcodec loader) and return the model inputs - in one call.

        Messages: `{"role", "content"}` with content a string or a list of `{"type": "text", "text"}`,
        `{"type": "image", "image"|"path"|"url"|"image_url": ...}`, `{"type": "video", "video"|"path"|"url": ...}`
        (a file/URL, a list of frames, or an array). An item may carry its own budget (`fps`, `max_frames`,
        `min_pixels`, `max_pixels`, `total_pixels`, `nframes`, `video_start`, `video_end`, `size`, ... as
        qwen-vl-utils), which beats the call-level values (merge order: see the class doc).

        Args:
            conversation: one list of messages, or a list of them (a batch).
            tools, documents, add_generation_prompt, continue_final_message: as in transformers.
            tokenize: False returns the prompt string(s) with unexpanded placeholders.
            return_dict: with `tokenize`, True returns the BatchFeature of `__call__`; False only `input_ids`.
            **kwargs: budget keys (see `__call__`), tokenizer keys (`padding`, `padding_side`, `truncation`,
                `max_length`, ...) and template variables (`enable_thinking`, `add_vision_id`, anything else).

        Returns:
            str | list[str] when not tokenizing; BatchFeature (or input_ids) otherwise.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        call_video = {k: kwargs.pop(k) for k in VIDEO_SETTING_KEYS if k in kwargs}
        call_image = _call_image_settings(call_video, kwargs)
        text_kwargs = {k: kwargs.pop(k) for k in TEXT_KWARGS if k in kwargs}
        for key in ("return_assistant_tokens_mask", "return_metadata", "num_frames_sampled"):
            kwargs.pop(key, None)
        rendered = self.tokenizer.apply_chat_template(
            [list(c) for c in conversations],
            chat_template=chat_template or self.chat_template,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **kwargs,
        )
        texts = [rendered] if isinstance(rendered, str) else list(rendered)
        if not tokenize:
            return texts if batched else texts[0]

        images, image_settings, videos, metadata, video_settings = [], [], [], [], []
        for messages in conversations:
            for kind, item in _vision_items(messages):
                if kind == "image":
                    s = self._image_settings(call_image, {k: item[k] for k in IMAGE_ITEM_KEYS if k in item})
                    images.append(_item_source(item, ("image", "path", "url", "image_url")))
                    image_settings.append(s)
                else:
                    s = self._video_settings(call_video, {k: item[k] for k in VIDEO_SETTING_KEYS if k in item})
                    frames, meta = self._load_video(_item_source(item, ("video", "path", "url", "video_url")), s)
                    videos.append(frames)
                    metadata.append(meta)
                    video_settings.append(s)
        out = self._encode(
            images=images or None,
            text=texts,
            videos=videos or None,
            video_metadata=metadata or None,
            video_settings=video_settings or None,
            image_settings=image_settings or None,
            return_tensors=return_tensors,
            **text_kwargs,
        )
        return out if return_dict else out["input_ids"]

    def batch_decode(self, *args, **kwargs):
        """Token ids -> strings: the tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """Token ids -> string: the tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Generated ids -> strings (used by transformers' image-text-to-text pipeline)."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Input-shape helpers
# ---------------------------------------------------------------------------------------------------------------
def _call_image_settings(call_video: dict, kwargs: dict) -> dict:
    """The image keys of one call: `image_min_pixels` / `image_max_pixels` popped from `kwargs`, and the shared
    `min_pixels` / `max_pixels` / `resized_height` / `resized_width` of `call_video` (they bound images too)."""
    settings = {k: call_video[k] for k in ("min_pixels", "max_pixels", "resized_height", "resized_width") if k in call_video}
    settings.update({k: kwargs.pop(k) for k in ("image_min_pixels", "image_max_pixels") if k in kwargs})
    return settings


def _is_image_item(item: dict) -> bool:
    return item.get("type") in ("image", "image_url") or "image" in item or "image_url" in item


def _vision_items(messages) -> list[tuple[str, dict]]:
    """Images and videos in the order the chat template renders them (same classification rule)."""
    found = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, (list, tuple)):
            for item in content:
                if not isinstance(item, dict):
                    continue
                if _is_image_item(item):
                    found.append(("image", item))
                elif item.get("type") == "video" or "video" in item:
                    found.append(("video", item))
    return found


def _item_source(item: dict, keys: tuple[str, ...]):
    for key in keys:
        value = item.get(key)
        if value is not None:
            return value.get("url") if isinstance(value, dict) else value
    raise ValueError(f"a {item.get('type', 'vision')} item needs one of the keys {keys}: {item}")


def _flatten_images(images) -> list:
    if isinstance(images, (list, tuple)):
        out = []
        for image in images:
            out.extend(_flatten_images(image) if isinstance(image, (list, tuple)) else [image])
        return out
    return [images]


def _as_video_list(videos) -> list:
    if isinstance(videos, (str, os.PathLike)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        return [videos] if videos.ndim == 4 else list(videos)
    videos = list(videos)
    if videos and (isinstance(videos[0], Image.Image) or (hasattr(videos[0], "ndim") and videos[0].ndim == 3)):
        return [videos]  # one video given as a list of frames
    return videos


def _as_list(value, n: int, name: str) -> list:
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"got {len(value)} {name} entries for {n} videos")
        return list(value)
    if n != 1:
        raise ValueError(f"got one {name} entry for {n} videos")
    return [value]
