"""Images and videos for the vLLM plugin: our processor inside vLLM's multimodal pipeline (SPEC §6, §7).

vLLM tokenizes the chat prompt (one `<|vision_start|><|video_pad|><|vision_end|>` / `<|image_pad|>` placeholder per
item) and asks the model's multimodal processor for the items' tensors and each placeholder's replacement. Here both
come from `InternVideo3Processor` itself: it is called on the items with a prompt of bare placeholders, and the tokens
it expands each placeholder into (timestamps, `<|vision_start|>`, pads, `<|vision_end|>` per frame group) are the
replacement, so a prompt served by vLLM holds exactly the tokens `processor.apply_chat_template` gives.

Videos sent by URL or data URL are decoded by `InternVideo3VideoLoader` (PyAV, our sampling and resize, the served
folder's settings updated by `media_io_kwargs={"video": {...}}`), registered in vLLM's `VIDEO_LOADER_REGISTRY` as
"internvideo3" and chosen for our model type (see `register_video_loader`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import MultiModalDataParser
from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo
from vllm.multimodal.processing.processor import PromptReplacement, PromptUpdateDetails
from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

import vision_settings_internvideo3 as vision_settings
from video_processing_internvideo3 import InternVideo3VideoProcessor, VideoLoadError

LOADER = "internvideo3"
IMAGE_SLOT = vision_settings.VISION_START + vision_settings.IMAGE_PAD + vision_settings.VISION_END
VIDEO_SLOT = vision_settings.VISION_START + vision_settings.VIDEO_PAD + vision_settings.VISION_END
# Keywords vLLM's VideoMediaIO passes to every loader; not settings of ours (`num_frames` is always sent, 32 by
# default, so it cannot mean a request for 32 frames: use `nframes` / `max_frames`).
_VLLM_LOADER_KEYWORDS = {"num_frames", "frame_recovery", "backend", "max_duration"}


class InternVideo3VideoLoader(VideoLoader):
    """vLLM video loader: the bytes of a `video_url` part -> (frames uint8 [T, H, W, 3] at the processor's target
    size, metadata dict of `VideoMetadata`'s fields with `resized` True), decoded by our PyAV path.

    Settings: those of the served folder's video processor (set by `InternVideo3ProcessingInfo` when vLLM builds
    the processor; the class defaults of SPEC §7 before that), updated by vLLM's `media_io_kwargs["video"]`
    (`--media-io-kwargs` or per request): `fps`, `max_frames`, `min_frames`, `nframes`, `video_start`,
    `video_end`, `min_pixels`, `max_pixels`, `total_pixels`, ... (`VIDEO_SETTING_KEYS`).

    Raises:
        ValueError: an unknown setting (named), or a video that cannot be decoded (`VideoLoadError`, a ValueError,
            with PyAV's reason; vLLM returns it as the request's error).
    """

    video_processor: InternVideo3VideoProcessor | None = None

    @classmethod
    def load_bytes(cls, data: bytes, **kwargs) -> tuple[np.ndarray, dict[str, Any]]:
        settings = {k: v for k, v in kwargs.items() if k not in _VLLM_LOADER_KEYWORDS}
        unknown = set(settings) - set(vision_settings.VIDEO_SETTING_KEYS)
        if unknown:
            raise ValueError(f"media_io_kwargs['video']: unknown settings {sorted(unknown)} (allowed: "
                             f"{sorted(vision_settings.VIDEO_SETTING_KEYS)})")
        processor = cls.video_processor or InternVideo3VideoProcessor()
        if not data:
            raise VideoLoadError("the request's video is empty (0 bytes)")
        # PyAV demuxes a seekable file twice (timestamps, then frames); the bytes live in a private temporary file
        # only while they are decoded.
        handle, path = tempfile.mkstemp(prefix="internvideo3-", suffix=".video")
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(data)
            try:
                frames, meta = processor.load_video(path, **settings)
            except ValueError as error:
                if type(error).__name__ != VideoLoadError.__name__:  # the served processor's own copy of the class
                    raise
                raise VideoLoadError(f"the request's video ({len(data)} bytes) cannot be decoded: "
                                     f"{str(error).replace(path, 'video')}") from None
        finally:
            os.unlink(path)
        meta.source = None
        return frames, dataclasses.asdict(meta) | {"do_sample_frames": False}


def register_video_loader() -> None:
    """Register `InternVideo3VideoLoader` as vLLM video backend "internvideo3", and as the backend of our folders.

    vLLM chooses a folder's video loader from `video_processor_type` in its preprocessor config, else from
    transformers' `VIDEO_PROCESSOR_MAPPING_NAMES[model_type]` (vllm/transformers_utils/processor.py,
    `get_video_processor_cls_name_from_config`). Our folders name no `video_processor_type` (transformers 4.57's
    AutoVideoProcessor rejects unknown ones), so the model type "internvideo3" is entered in that mapping, in the
    form of the installed transformers (a name, or {"torchvision": name} from 5.19 on). Idempotent."""
    VIDEO_LOADER_REGISTRY.register(LOADER, video_processor=InternVideo3VideoProcessor.__name__)(InternVideo3VideoLoader)
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

    if "internvideo3" not in VIDEO_PROCESSOR_MAPPING_NAMES:
        sample = next(iter(VIDEO_PROCESSOR_MAPPING_NAMES.values()), None)
        name = InternVideo3VideoProcessor.__name__
        VIDEO_PROCESSOR_MAPPING_NAMES["internvideo3"] = {"torchvision": name} if isinstance(sample, dict) else name


def placeholder_text(mm_counts: Mapping[str, int]) -> str:
    """One bare placeholder per item, images first (`_video_expansions` splits the processor's expansion of it)."""
    return IMAGE_SLOT * mm_counts.get("image", 0) + VIDEO_SLOT * mm_counts.get("video", 0)


def _video_metadata_class(hf_processor):
    """The `VideoMetadata` class of the processor's own module (remote code is a separate copy of our files)."""
    return sys.modules[type(hf_processor.video_processor).__module__].VideoMetadata


class InternVideo3DataParser(MultiModalDataParser):
    """vLLM's parser keeping each video's metadata with its frames (`{}` where none came): vLLM's processor cache
    re-parses items from their frames alone otherwise, and the timestamps are in the metadata."""

    def __init__(self, **kwargs):
        super().__init__(video_needs_metadata=True, **kwargs)

    def _get_video_with_metadata(self, video):
        frames, metadata = super()._get_video_with_metadata(video)
        return frames, {} if metadata is None else metadata


class InternVideo3ProcessingInfo(BaseProcessingInfo):
    """What vLLM asks of the model's processing: the processor, item limits, kwargs scopes, tokens per item."""

    def get_hf_processor(self, **kwargs: object):
        processor = self.ctx.get_hf_processor(**kwargs)
        if not kwargs:  # the served folder's settings, for videos vLLM decodes itself
            InternVideo3VideoLoader.video_processor = processor.video_processor
        return processor

    def get_data_parser(self) -> MultiModalDataParser:
        return InternVideo3DataParser(expected_hidden_size=self._get_expected_hidden_size(),
                                      allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        # Our processor takes its settings flat (transformers' typed kwargs classes are not declared).
        video = set(vision_settings.VIDEO_SETTING_KEYS)
        return {"text_kwargs": set(vision_settings.TEXT_KWARGS), "videos_kwargs": video,
                "images_kwargs": {"min_pixels", "max_pixels", "image_min_pixels", "image_max_pixels"}}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # An item is bounded by the prompt it must fit in; the pixel and frame budgets (SPEC §7) allow more.
        return {modality: seq_len for modality in ("image", "video")}


class InternVideo3DummyInputsBuilder(BaseDummyInputsBuilder[InternVideo3ProcessingInfo]):
    """Profiling inputs: one 64×64 image (4 tokens) / a 2-frame 64×64 video (one frame group) per item."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return placeholder_text(mm_counts)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        side = 2 * vision_settings.PATCH_SIZE * vision_settings.MERGE_SIZE
        return {
            "image": self._get_dummy_images(width=side, height=side, num_images=mm_counts.get("image", 0)),
            "video": self._get_dummy_videos(width=side, height=side, num_frames=vision_settings.TEMPORAL_PATCH_SIZE,
                                            num_videos=mm_counts.get("video", 0)),
        }


class InternVideo3MultiModalProcessor(BaseMultiModalProcessor[InternVideo3ProcessingInfo]):
    """Items -> `pixel_values` / `image_grid_thw` / `pixel_values_videos` / `video_grid_thw` and, per video, its
    placeholder's tokens (`video_token_ids`), all from `InternVideo3Processor` (module doc)."""

    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str:
        return placeholder_text(mm_counts)

    def _get_hf_mm_inputs(self, mm_items, hf_kwargs):
        inputs = super()._get_hf_mm_inputs(mm_items, hf_kwargs)
        if "videos" in inputs.hf_data:  # (frames, metadata) pairs (InternVideo3DataParser)
            cls = _video_metadata_class(self.info.get_hf_processor())
            fields = {f.name for f in dataclasses.fields(cls)}
            videos, metadata = zip(*inputs.hf_data["videos"])
            inputs.hf_data["videos"] = list(videos)
            # our loader's metadata back into the processor's own class: frames sampled and resized already
            inputs.hf_data["video_metadata"] = [
                cls(**{k: v for k, v in m.items() if k in fields}) if m.get("resized") else (m or None)
                for m in metadata
            ]
        return inputs

    def _call_hf_processor(self, hf_data, hf_kwargs):
        out = super()._call_hf_processor(hf_data, hf_kwargs)
        ids = out.pop("input_ids")[0].tolist()
        out.pop("attention_mask", None)
        if "video_grid_thw" in out:
            out["video_token_ids"] = self._video_expansions(ids, out["video_grid_thw"], len(out.get("image_grid_thw", [])))
        return out

    def _video_expansions(self, ids: list[int], grids: torch.Tensor, n_images: int) -> list[torch.Tensor]:
        """Split the processor's expansion of `IMAGE_SLOT * n_images + VIDEO_SLOT * n_videos` into one token list per
        video: video i spans `t_i` frame groups, each closed by `<|vision_end|>`."""
        end = self.info.get_hf_config().vision_end_token_id
        closes = [i for i, token in enumerate(ids) if token == end]
        expansions, done = [], n_images
        for t in grids[:, 0].tolist():
            first = closes[done - 1] + 1 if done else 0
            expansions.append(torch.tensor(ids[first:closes[done + t - 1] + 1]))
            done += t
        return expansions

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        image_sizes = hf_inputs.get("image_grid_thw", torch.empty((0, 3))).prod(-1)
        video_sizes = hf_inputs.get("video_grid_thw", torch.empty((0, 3))).prod(-1)
        return dict(
            pixel_values=MultiModalFieldConfig.flat_from_sizes("image", image_sizes),
            image_grid_thw=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            pixel_values_videos=MultiModalFieldConfig.flat_from_sizes("video", video_sizes),
            video_grid_thw=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            video_token_ids=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        config = self.info.get_hf_config()
        merge = config.vision_config.spatial_merge_size**2

        def image_tokens(i: int):
            grid = out_mm_kwargs["image"][i]["image_grid_thw"].data
            return [config.image_token_id] * (int(grid.prod()) // merge)

        def video_tokens(i: int):
            ids = out_mm_kwargs["video"][i]["video_token_ids"].data.tolist()
            return PromptUpdateDetails.select_token_id(ids, config.video_token_id)

        return [
            PromptReplacement(modality="image", target=[config.image_token_id], replacement=image_tokens),
            PromptReplacement(modality="video", target=[config.vision_start_token_id, config.video_token_id,
                                                        config.vision_end_token_id], replacement=video_tokens),
        ]
