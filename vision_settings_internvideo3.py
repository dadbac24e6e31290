"""Vision settings of the InternVideo3 processor: constants, validation and merging (SPEC §2, §7; issue 24 item 3).

The image processor (`image_processing_internvideo3.py`), the video processor (`video_processing_internvideo3.py`)
and the processor (`processing_internvideo3.py`) all take their defaults, bounds and the one merge order from here:

    defaults < processor (constructor, *_config.json) < call (keyword arguments) < item (keys on one chat item)

Each level replaces the keys it sets; pixel bounds in conflict across levels: the less specific one yields
(`resolve_bounds`). Values are validated once, where they enter (`check_settings`), and the merged result is a
`VisionSettings`, which the code it is passed to uses as it is, never merging or checking it again.

This module also holds the transformers version differences of the processor files (one place, SPEC §8).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

try:  # Hub export / checkpoint folder: flat sibling files
    from .configuration_internvideo3 import numeric_range, numeric_range_problem
except ImportError:  # source checkout with the repository root on sys.path
    from configuration_internvideo3 import numeric_range, numeric_range_problem

# ---------------------------------------------------------------------------------------------------------------
# transformers version differences of the processor files (features detected, not version strings)
# ---------------------------------------------------------------------------------------------------------------
# Size rules (SPEC §7) are transformers' own, imported from modules that need no torchvision: 5.x moved the PIL image
# processor, and its `smart_resize`, to image_processing_pil_qwen2_vl (its image_processing_qwen2_vl needs
# torchvision); 4.57's image_processing_qwen2_vl is the PIL/numpy one.
try:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as smart_resize_volume

# The video processor's base: 5.x's `VideoProcessorMixin` is the loading/saving half of `BaseVideoProcessor` without
# the torchvision backend; 4.57 has only `BaseVideoProcessor` (whose torchvision parts stay unused here).
try:
    from transformers.video_processing_utils import VideoProcessorMixin as VideoProcessorBase
except ImportError:
    from transformers.video_processing_utils import BaseVideoProcessor as VideoProcessorBase

# How a processor's parts are loaded: 4.57 to 5.24 call `ProcessorMixin._get_arguments_from_pretrained` (a list in
# `attributes` / `__init__` order), 5.25 calls `_resolve_subprocessors` (the processor dict with the parts filled in);
# `InternVideo3Processor` implements both hooks with one loader (`_load_parts`). 4.57 reads the class attribute
# `attributes`, 5.x infers the parts from `__init__`'s parameter names.

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
# qwen-vl-utils fetch_image / fetch_video: an explicit resized_height x resized_width is only rounded to the factor,
# within IMAGE_MIN_TOKEN_NUM = 4 and IMAGE_MAX_TOKEN_NUM = 16384 tokens (of factor² pixels each)
EXPLICIT_SIZE_MIN_TOKENS = 4
EXPLICIT_SIZE_MAX_TOKENS = 16384
# A clip is variable frame rate when some frame interval differs from the median one by more than this fraction of
# it (this package's rule: neither transformers nor qwen-vl-utils detects VFR). CFR clips are sampled by index, as
# transformers does, VFR ones uniformly in time.
VFR_INTERVAL_TOLERANCE = 0.25
# Opening and downloading a URL gives up after this many seconds (PyAV's `timeout`, urllib's)
NETWORK_TIMEOUT_S = 60
# the two video pixel budgets (video_processing_internvideo3.py)
VIDEO_BUDGETS = ("per_frame", "total")
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


def check_setting(name: str, value) -> None:
    """Raise ValueError naming `name`, `value` and the allowed range unless `value` fits `_NUMERIC_SETTINGS[name]`."""
    kind, low, inclusive, unit = _NUMERIC_SETTINGS[name]
    problem = numeric_range_problem(value, kind == "integer", low, inclusive)
    if problem:
        allowed = f"{numeric_range(kind == 'integer', low, inclusive)} ({unit})"
        named = f" ({type(value).__name__})" if problem == "type" else ""
        raise ValueError(f"{name} must be {allowed}, got {value!r}{named}")


def check_settings(settings: dict, explicit: Sequence[str] = ()) -> None:
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
            check_setting(name, value)
    get = settings.get
    if get("video_budget") is not None and get("video_budget") not in VIDEO_BUDGETS:
        raise ValueError(f"video_budget must be 'per_frame' or 'total', got {get('video_budget')!r}")
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


class VisionSettings(dict):
    """Settings merged and validated once (`InternVideo3VideoProcessor.merge_settings`,
    `InternVideo3ImageProcessor.merge_settings`): used as they are where they are passed on (`target_size`,
    decoding), never merged or checked again."""


def resolve_bounds(
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
                check_setting(name, values[name])
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


def yielded_min_pixels(max_pixels):
    """A video `min_pixels` that yields to a smaller given `max_pixels`: with qwen-vl-utils' 1.05 slack on top
    (`video_target_size`) frames still stay within `max_pixels`."""
    return int(max_pixels / FRAME_PIXELS_SLACK)


def given_keys(values: dict | None) -> dict:
    """The keys of one settings level that are set (`None` means "not set")."""
    return {k: v for k, v in (values or {}).items() if v is not None}


# ---------------------------------------------------------------------------------------------------------------
# Chat template (SPEC §7): Qwen3-VL message layout plus Qwen3's thinking switch and tool calls.
