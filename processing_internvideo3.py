"""InternVideo3 processor: the tokenizer, image processor and video processor under one `ProcessorMixin`, and the
prompt they build (SPEC §7, issue 24).

Hugging Face remote code (SPEC §8): this flat file and its siblings travel with a checkpoint and load with
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` on transformers 4.57.3 and 5.x; `AutoImageProcessor`
and `AutoVideoProcessor` load the parts alone. The parts, by file:

    vision_settings_internvideo3.py   constants, validation, the merge order, transformers version differences
    video_decoding_internvideo3.py    PyAV demuxing, frame sampling, timestamps
    video_frames_internvideo3.py      the decode pass: seeking spans on their own threads, RGB, resizing thread
    video_processing_internvideo3.py  InternVideo3VideoProcessor: budgets, in-memory frames, pixel_values_videos
    image_processing_internvideo3.py  InternVideo3ImageProcessor: images, resizing, the shared patch writer
    processing_internvideo3.py        InternVideo3Processor: prompt expansion, tokenization, the chat template
    chat_template.jinja               the chat template (in every folder; transformers loads it)

Prompt layout: each group g of 2 frames -> "<{t_g:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (H'/32 * W'/32)
+ "<|vision_end|>", t_g = mean timestamp of the group's two frames; an image -> t·h·w/4 `<|image_pad|>` tokens. This
equals `Qwen3VLProcessor` of transformers <= 5.10 and >= 5.25 on every supported transformers version (5.12 to 5.24
keep two extra outer `<|vision_start|>`/`<|vision_end|>` tokens per video; this package never does).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

# Flat sibling modules: in a Hub folder they form a generated package, of which transformers copies the siblings
# named in a module's `from .name import` lines (4.57: only those of the module it loads, so each entry module
# names every sibling it needs that way); in a checkout or an installed package they are top-level modules.
try:
    from .configuration_internvideo3 import numeric_range  # noqa: F401 - copies vision_settings' sibling (4.57)
    from .image_processing_internvideo3 import InternVideo3ImageProcessor, load_image, resize_frames
    from .video_decoding_internvideo3 import (
        TruncatedVideoWarning, VideoLoadError, VideoMetadata, group_timestamps, sample_frame_indices,
    )  # fmt: skip
    from .video_frames_internvideo3 import decode_frames  # noqa: F401 - copies video_decoding's sibling (4.57)
    from .video_processing_internvideo3 import InternVideo3VideoProcessor, as_list, as_video_list, load_video
    from .vision_settings_internvideo3 import smart_resize
    from . import vision_settings_internvideo3 as vision_settings
except ImportError:
    from image_processing_internvideo3 import InternVideo3ImageProcessor, load_image, resize_frames
    from video_decoding_internvideo3 import (
        TruncatedVideoWarning, VideoLoadError, VideoMetadata, group_timestamps, sample_frame_indices,
    )  # fmt: skip
    from video_processing_internvideo3 import InternVideo3VideoProcessor, as_list, as_video_list, load_video
    from vision_settings_internvideo3 import smart_resize
    import vision_settings_internvideo3 as vision_settings

__all__ = [
    "InternVideo3ImageProcessor",
    "InternVideo3Processor",
    "InternVideo3VideoProcessor",
    "TruncatedVideoWarning",
    "VideoLoadError",
    "VideoMetadata",
    "default_chat_template",
    "group_timestamps",
    "load_image",
    "load_video",
    "resize_frames",
    "sample_frame_indices",
    "smart_resize",
]

CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Processor-level settings routed to the parts (the constructor's `**settings`, a legacy flat processor_config.json,
# keyword arguments of `from_pretrained`): name -> (part, the part's name). `min_pixels` / `max_pixels` bound images
# too unless `image_min_pixels` / `image_max_pixels` are given (`_image_bounds`).
VIDEO_PART_SETTINGS = {
    "fps": "fps", "min_frames": "min_frames", "max_frames": "max_frames", "video_budget": "video_budget",
    "min_pixels": "min_pixels", "max_pixels": "max_pixels", "total_pixels": "total_pixels", "size": "size",
    "video_resize_backend": "resize_backend",
}  # fmt: skip
IMAGE_PART_SETTINGS = {"image_resize_backend": "resize_backend"}
SHARED_PART_SETTINGS = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
IMAGE_BOUND_SETTINGS = ("min_pixels", "max_pixels", "image_min_pixels", "image_max_pixels")
PROCESSOR_SETTINGS = (*VIDEO_PART_SETTINGS, *IMAGE_PART_SETTINGS, *SHARED_PART_SETTINGS, *IMAGE_BOUND_SETTINGS)


@functools.lru_cache(maxsize=1)
def default_chat_template() -> str | None:
    """The package's chat template (`assets/chat_template.jinja`), for processors built in Python; None where it is
    not installed (Hub remote code: there transformers loads the folder's `chat_template.jinja`)."""
    here = Path(__file__).resolve().parent
    for path in (here / CHAT_TEMPLATE_FILE, here / "assets" / CHAT_TEMPLATE_FILE,
                 here / "internvideo3" / "assets" / CHAT_TEMPLATE_FILE):  # fmt: skip
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def _part_settings(part) -> dict:
    """The constructor settings of an image/video processor (its saved config without the bookkeeping keys)."""
    config = part.to_dict()
    for key in ("auto_map", "_processor_class", "processor_class", "image_processor_type"):
        config.pop(key, None)
    return config


def _build_parts(image_processor, video_processor, settings: dict):
    """The two parts with processor-level `settings` (keys of `PROCESSOR_SETTINGS`) applied over their own
    configuration (or over the defaults for a part not given). Raises ValueError naming a bad setting."""
    image_overrides = {IMAGE_PART_SETTINGS[k]: v for k, v in settings.items() if k in IMAGE_PART_SETTINGS}
    video_overrides = {VIDEO_PART_SETTINGS[k]: v for k, v in settings.items() if k in VIDEO_PART_SETTINGS}
    for key in SHARED_PART_SETTINGS:
        if key in settings:
            image_overrides[key] = video_overrides[key] = settings[key]
    if any(settings.get(k) is not None for k in IMAGE_BOUND_SETTINGS):
        # one level (the processor's): an image-only name beats the shared one
        image_overrides["min_pixels"] = next(
            (settings[k] for k in ("image_min_pixels", "min_pixels") if settings.get(k) is not None), None
        )
        image_overrides["max_pixels"] = next(
            (settings[k] for k in ("image_max_pixels", "max_pixels") if settings.get(k) is not None), None
        )
    return (
        _configured(InternVideo3ImageProcessor, image_processor, image_overrides),
        _configured(InternVideo3VideoProcessor, video_processor, video_overrides),
    )


def _configured(cls, part, overrides: dict):
    """`part` (or a default `cls()` when None) with `overrides` applied over its settings: a new part when there are
    overrides, `part` itself otherwise. Given pixel bounds replace the part's pair, so a bound given alone yields
    against the defaults (as at construction), not against the part's other bound."""
    if part is not None and not overrides:
        return part
    base = _part_settings(part) if part is not None else {}
    if "min_pixels" in overrides or "max_pixels" in overrides:
        base.pop("min_pixels", None), base.pop("max_pixels", None)
    return cls(**{**base, **overrides})


def _load_parts(folder, processor_dict: dict | None, kwargs: dict) -> dict:
    """{"image_processor", "tokenizer", "video_processor"} of a saved folder: the parts' own files
    (preprocessor_config.json, video_preprocessor_config.json, the tokenizer files) loaded by our classes, so
    the parts come from this module's siblings whatever transformers' Auto mappings hold; a folder written before
    the split (settings in a flat processor_config.json) builds them from those settings. Processor-level settings
    among `kwargs` (the keyword arguments of `from_pretrained`) are applied over both; parts given in `kwargs` are
    used as they are. Loading keys (`cache_dir`, `revision`, `token`, ...) pass to each part's `from_pretrained`."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    processor_dict = processor_dict or {}
    given = {name: kwargs.pop(name) for name in ("image_processor", "tokenizer", "video_processor") if name in kwargs}
    settings = {k: kwargs.pop(k) for k in PROCESSOR_SETTINGS if k in kwargs}
    legacy = {k: processor_dict[k] for k in PROCESSOR_SETTINGS if k in processor_dict}
    loading = {k: v for k, v in kwargs.items() if k in LOADING_KWARGS}
    parts = dict(given)
    if "tokenizer" not in parts:
        parts["tokenizer"] = AutoTokenizer.from_pretrained(folder, **loading)
    for name, cls in (("image_processor", InternVideo3ImageProcessor), ("video_processor", InternVideo3VideoProcessor)):
        if name in parts:
            continue
        if isinstance(processor_dict.get(name), dict):  # transformers >= 5 nests the parts in processor_config.json
            parts[name] = cls.from_dict(dict(processor_dict[name]))
            continue
        try:  # transformers 4.57 writes preprocessor_config.json / video_preprocessor_config.json
            parts[name] = cls.from_pretrained(folder, **loading)
        except OSError:  # neither: a folder from before the split, its settings flat in processor_config.json
            parts[name] = None
    parts["image_processor"], parts["video_processor"] = _build_parts(
        parts["image_processor"], parts["video_processor"], {**legacy, **settings}
    )
    return parts


def _part_setting(part: str, name: str) -> property:
    """A read-only processor attribute that is setting `name` of part `part` (the parts hold the settings)."""
    return property(lambda self: getattr(getattr(self, part), name), doc=f"`{part}.{name}` (read-only)")


# keyword arguments of `from_pretrained` that say where and how to read files, passed on to each part
LOADING_KWARGS = (
    "cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies", "trust_remote_code",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------------------------
class InternVideo3Processor(ProcessorMixin):
    r"""Tokenizer (Qwen2/Qwen3 BPE) + `InternVideo3ImageProcessor` + `InternVideo3VideoProcessor` + chat template
    for InternVideo3 (SPEC §7), laid out as transformers' `Qwen3VLProcessor`.

    Args:
        image_processor: an `InternVideo3ImageProcessor` (default: one with the Qwen3-VL release's settings).
        tokenizer: a Qwen2 tokenizer (`Qwen2Tokenizer` / `Qwen2TokenizerFast`).
        video_processor: an `InternVideo3VideoProcessor` (default: the InternVideo3 settings).
        chat_template: jinja template; default `default_chat_template()` (Qwen3-VL layout with `enable_thinking`,
            tools, `add_vision_id` labels). `from_pretrained` reads the folder's `chat_template.jinja`.
        padding_side: "left" (default, for batched generation) or "right".
        **settings: processor-level settings applied over the parts' own (the InternVideo3 processor's arguments
            before the split, still accepted): `fps`, `min_frames`, `max_frames`, `video_budget`, `min_pixels`,
            `max_pixels`, `total_pixels`, `size`, `image_min_pixels`, `image_max_pixels`, `patch_size`,
            `temporal_patch_size`, `merge_size`, `image_mean`, `image_std`, `image_resize_backend`,
            `video_resize_backend`. `min_pixels` / `max_pixels` bound images too (as Qwen2-VL/Qwen3-VL processors
            do) unless `image_min_pixels` / `image_max_pixels` are given.

    Settings merge in one order, each level replacing the keys it sets: defaults < processor (the parts' configs,
    these arguments) < call (keyword arguments of `__call__` / `apply_chat_template`) < item (keys on one
    image/video item of a message). On one level an image-only name beats the shared one (`image_max_pixels` over
    `max_pixels`); across levels the more specific level wins. Pixel bounds in conflict (min > max) from different
    levels: the less specific one yields; from one level: ValueError.

    `__call__` returns `input_ids`, `attention_mask`, and when given `pixel_values` [N_img_patches, 1536] float32,
    `image_grid_thw` [n_images, 3], `pixel_values_videos` [N_vid_patches, 1536] float32, `video_grid_thw`
    [n_videos, 3] (t, h, w patch grid before the 2×2 merge; a video costs t·h·w/4 `<|video_pad|>` tokens).

    Raises:
        TypeError: an unknown constructor argument. ValueError: a setting out of range (naming it).
    """

    # transformers 4.57 reads `attributes`; 5.x infers the parts from `__init__`'s parameter names. No
    # `*_class` attributes: the parts are loaded by `_load_parts` (5.x deprecates them).
    attributes = ["image_processor", "tokenizer", "video_processor"]
    # save_pretrained writes auto_map {"AutoProcessor": "processing_internvideo3.InternVideo3Processor"} and this file.
    _auto_class = "AutoProcessor"
    # remote code lives in a generated module: `processor.TruncatedVideoWarning` reaches the class for warning
    # filters, `processor.VideoLoadError` the error class (the same objects the parts raise)
    TruncatedVideoWarning = TruncatedVideoWarning
    VideoLoadError = VideoLoadError

    def __init__(
        self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, padding_side="left",
        **settings,
    ):  # fmt: skip
        unknown = set(settings) - set(PROCESSOR_SETTINGS)
        if unknown:
            raise TypeError(f"InternVideo3Processor got unexpected arguments: {sorted(unknown)}")
        for name, part in (("image_processor", image_processor), ("video_processor", video_processor)):
            if part is not None:  # before the settings are applied to it
                self.check_argument_for_proper_class(name, part)
        if tokenizer is None:
            raise ValueError("InternVideo3Processor needs a tokenizer (a Qwen2/Qwen3 tokenizer)")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        image_processor, video_processor = _build_parts(image_processor, video_processor, settings)
        self.padding_side = padding_side
        super().__init__(
            image_processor, tokenizer, video_processor,
            chat_template=chat_template if chat_template is not None else default_chat_template(),
        )  # fmt: skip
        self.image_token, self.video_token = vision_settings.IMAGE_PAD, vision_settings.VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(vision_settings.IMAGE_PAD)
        self.video_token_id = tokenizer.convert_tokens_to_ids(vision_settings.VIDEO_PAD)
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(vision_settings.VISION_START)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(vision_settings.VISION_END)

    # ---- loading the parts (the hook transformers calls differs by release: vision_settings_internvideo3) ------
    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """transformers 4.57-5.24: the parts in `attributes` order (`_load_parts`). 4.57 passes no
        `processor_dict`: it is read here (a folder from before the split keeps its settings there)."""
        if processor_dict is None:
            processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
        parts = _load_parts(pretrained_model_name_or_path, processor_dict, dict(kwargs))
        return [parts[name] for name in cls.attributes]

    @classmethod
    def _resolve_subprocessors(cls, pretrained_model_name_or_path, processor_dict, **kwargs):
        """transformers >= 5.25: `processor_dict` with the parts filled in (`_load_parts`), and the keyword
        arguments left for the constructor."""
        processor_dict.update(_load_parts(pretrained_model_name_or_path, processor_dict, kwargs))
        for key in (*LOADING_KWARGS, "return_unused_kwargs", "_from_auto", "_commit_hash"):
            kwargs.pop(key, None)
        return processor_dict, kwargs

    def check_argument_for_proper_class(self, argument_name, argument):
        """The parts' types (transformers' check looks the classes up in its Auto mappings, which hold
        placeholders for remote code)."""
        expected = {"image_processor": InternVideo3ImageProcessor, "video_processor": InternVideo3VideoProcessor}
        if argument_name in expected:
            if not isinstance(argument, expected[argument_name]):
                raise TypeError(
                    f"{argument_name} must be an {expected[argument_name].__name__}, got {type(argument).__name__} "
                    "(the arguments are image_processor, tokenizer, video_processor, as in Qwen3VLProcessor: pass "
                    "the tokenizer as tokenizer=...)"
                )
            return expected[argument_name]
        if argument_name == "tokenizer":
            from transformers import PreTrainedTokenizerBase  # noqa: PLC0415

            if not isinstance(argument, PreTrainedTokenizerBase):
                raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(argument).__name__}")
            return PreTrainedTokenizerBase
        return super().check_argument_for_proper_class(argument_name, argument)

    # ---- settings (the parts') -------------------------------------------------------------------------------
    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"]


    def video_target_size(self, num_frames: int, height: int, width: int, settings: dict | None = None) -> tuple[int, int]:
        """`InternVideo3VideoProcessor.target_size`: resized (height, width) in pixels of a clip."""
        return self.video_processor.target_size(num_frames, height, width, settings)

    def image_target_size(self, height: int, width: int, settings: dict | None = None) -> tuple[int, int]:
        """`InternVideo3ImageProcessor.target_size`: resized (height, width) in pixels of an image."""
        return self.image_processor.target_size(height, width, settings)

    def load_video(self, source, frame_sink=None, resize=True, **settings) -> tuple[np.ndarray | None, VideoMetadata]:
        """`InternVideo3VideoProcessor.load_video`: decode and sample with this processor's settings."""
        return self.video_processor.load_video(source, frame_sink, resize, **settings)

    # ---- prompt expansion ----------------------------------------------------------------------------------
    def _expand_text(self, texts: list[str], image_grids, video_grids, video_stamps) -> list[str]:
        """Replace each image/video placeholder by its tokens (SPEC §7). Raises ValueError on a count mismatch."""
        merge = self.merge_size**2
        start, pad, end = vision_settings.VISION_START, vision_settings.VIDEO_PAD, vision_settings.VISION_END
        video_pattern = re.compile(re.escape(start + pad + end) + "|" + re.escape(pad))
        n_video_slots = sum(len(video_pattern.findall(t)) for t in texts)
        n_videos = 0 if video_grids is None else len(video_grids)
        if n_video_slots != n_videos:
            raise ValueError(f"the text has {n_video_slots} video placeholders but {n_videos} videos were given")
        n_image_slots = sum(t.count(vision_settings.IMAGE_PAD) for t in texts)
        n_images = 0 if image_grids is None else len(image_grids)
        if n_image_slots != n_images:
            raise ValueError(f"the text has {n_image_slots} image placeholders but {n_images} images were given")

        counter = {"image": 0, "video": 0}

        def video_tokens(_match) -> str:
            i = counter["video"]
            counter["video"] += 1
            t, h, w = (int(v) for v in video_grids[i])
            pads = vision_settings.VIDEO_PAD * (h * w // merge)
            return "".join(f"<{video_stamps[i][g]:.1f} seconds>{start}{pads}{end}" for g in range(t))

        def image_tokens(_match) -> str:
            i = counter["image"]
            counter["image"] += 1
            return vision_settings.IMAGE_PAD * (int(image_grids[i].prod()) // merge)

        out = []
        for text in texts:
            text = video_pattern.sub(video_tokens, text)
            out.append(re.sub(re.escape(vision_settings.IMAGE_PAD), image_tokens, text))
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
        call_video = {k: kwargs.pop(k) for k in vision_settings.VIDEO_SETTING_KEYS if k in kwargs}
        call_image = _call_image_settings(call_video, kwargs)
        text_kwargs = {k: kwargs.pop(k) for k in vision_settings.TEXT_KWARGS if k in kwargs}
        if kwargs:
            raise TypeError(f"InternVideo3Processor got unexpected keyword arguments: {sorted(kwargs)}")

        data: dict[str, Any] = {}
        image_grids = video_grids = video_stamps = None
        if images is not None:
            images = _flatten_images(images)
            settings = image_settings or [self.image_processor.merge_settings(call_image)] * len(images)
            data["pixel_values"], image_grids = self.image_processor.process(images, settings, do_resize)
            data["image_grid_thw"] = image_grids
        if videos is not None:
            videos = as_video_list(videos)
            metadata = as_list(video_metadata, len(videos), "video_metadata")
            if video_settings is None:
                fps_value = call_video.get("fps")
                video_settings = []
                for i in range(len(videos)):
                    call = dict(call_video)
                    if isinstance(fps_value, (list, tuple)):  # qwen-vl-utils' video_kwargs: one fps per video
                        call["fps"] = fps_value[i]
                    video_settings.append(self.video_processor.merge_settings(call))
            data["pixel_values_videos"], video_grids, video_stamps = self.video_processor.process(
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
        call_video = {k: kwargs.pop(k) for k in vision_settings.VIDEO_SETTING_KEYS if k in kwargs}
        call_image = _call_image_settings(call_video, kwargs)
        text_kwargs = {k: kwargs.pop(k) for k in vision_settings.TEXT_KWARGS if k in kwargs}
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
                    merged = self.image_processor.merge_settings(
                        call_image, {k: item[k] for k in vision_settings.IMAGE_ITEM_KEYS if k in item}
                    )
                    images.append(_item_source(item, ("image", "path", "url", "image_url")))
                    image_settings.append(merged)
                else:
                    merged = self.video_processor.merge_settings(
                        call_video, {k: item[k] for k in vision_settings.VIDEO_SETTING_KEYS if k in item}
                    )
                    source = _item_source(item, ("video", "path", "url", "video_url"))
                    frames, meta = self.video_processor.decode(source, merged)
                    videos.append(frames)
                    metadata.append(meta)
                    video_settings.append(merged)
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


# the processor-level settings, read from the parts (as before the split: `processor.fps`, `.min_pixels`, ...)
SETTING_ATTRIBUTES = {
    **{name: ("video_processor", name) for name in (
        "fps", "min_frames", "max_frames", "video_budget", "min_pixels", "max_pixels", "total_pixels", "size",
        "patch_size", "temporal_patch_size", "merge_size",
    )},
    "image_min_pixels": ("image_processor", "min_pixels"),
    "image_max_pixels": ("image_processor", "max_pixels"),
}  # fmt: skip
for _name, (_part, _setting) in SETTING_ATTRIBUTES.items():
    setattr(InternVideo3Processor, _name, _part_setting(_part, _setting))


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

