"""InternVideo3 video processing: sampling budgets, in-memory frames, patchification (SPEC §7).

`InternVideo3VideoProcessor` is the processor's `video_processor` (`AutoVideoProcessor` loads it with
`trust_remote_code=True`); decoding itself is video_decoding_internvideo3.py (PyAV). The numbers are the
InternVideo3-8B / Qwen3-VL-8B ones:

    video file --load_video--> frames uint8 [T, H, W, 3] + VideoMetadata (timestamps in seconds)
        T: frames sampled at `fps` (default 2) clamped to [min_frames, max_frames], padded to a multiple of 2
    frames --resize (bicubic, antialiased) to multiples of 32 within the pixel budget--> [T, 3, H', W']
        --(x - 127.5) / 127.5--> --patchify--> pixel_values_videos [T/2 * H'/16 * W'/16, 1536] float32
                                               video_grid_thw [n_videos, 3] = (T/2, H'/16, W'/16)

Two pixel budgets, both producing multiples of 32 and both selectable per call and per video:

* ``video_budget="per_frame"`` (default, qwen-vl-utils semantics): every frame gets between `min_pixels`
  (128·32² = 131,072) and `max_pixels` (768·32² = 786,432) pixels, and all frames together at most `total_pixels`
  (128,000·32²·0.9 = 117,964,800 pixels, i.e. about 115,200 visual tokens). Token cost grows with clip length.
* ``video_budget="total"`` (transformers' `Qwen3VLVideoProcessor` semantics): `size={"shortest_edge": 4,096,
  "longest_edge": 25,165,824}` bounds the whole T×H×W volume, so a short clip keeps near-native resolution and a long
  one is shrunk. Passing `size` to a call selects it; passing `min_pixels`/`max_pixels`/`total_pixels` selects
  ``"per_frame"``; `video_budget=` overrides both.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

# Flat sibling modules: in a Hub folder they form a generated package, of which transformers copies the siblings
# named in a module's `from .name import` lines (4.57: only those of the module it loads, so each entry module
# names every sibling it needs that way); in a checkout or an installed package they are top-level modules.
try:
    from .configuration_internvideo3 import numeric_range  # noqa: F401 - copies vision_settings' sibling (4.57)
    from .image_processing_internvideo3 import PatchLayoutMixin
    from . import image_processing_internvideo3 as image_processing
    from .video_decoding_internvideo3 import TruncatedVideoWarning, VideoLoadError, VideoMetadata
    from . import video_decoding_internvideo3 as video_decoding
    from .video_frames_internvideo3 import decode_frames  # noqa: F401 - copies video_decoding's sibling (4.57)
    from .vision_settings_internvideo3 import VisionSettings
    from . import vision_settings_internvideo3 as vision_settings
except ImportError:
    from image_processing_internvideo3 import PatchLayoutMixin
    import image_processing_internvideo3 as image_processing
    from video_decoding_internvideo3 import TruncatedVideoWarning, VideoLoadError, VideoMetadata
    import video_decoding_internvideo3 as video_decoding
    from vision_settings_internvideo3 import VisionSettings
    import vision_settings_internvideo3 as vision_settings

__all__ = ["InternVideo3VideoProcessor", "TruncatedVideoWarning", "VideoLoadError", "VideoMetadata", "load_video"]


def load_video(
    source,
    fps: float | None = vision_settings.DEFAULT_FPS,
    min_frames: int = vision_settings.DEFAULT_MIN_FRAMES,
    max_frames: int = vision_settings.DEFAULT_MAX_FRAMES,
    nframes: int | None = None,
    video_start: float | None = None,
    video_end: float | None = None,
    source_fps: float | None = None,
    resize_to: tuple[int, int] | Callable[[int, int, int], tuple[int, int]] | None = None,
    temporal_patch_size: int = vision_settings.TEMPORAL_PATCH_SIZE,
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
    sampling = {
        "fps": fps, "min_frames": min_frames, "max_frames": max_frames, "nframes": nframes,
        "video_start": video_start, "video_end": video_end, "temporal_patch_size": temporal_patch_size,
    }  # fmt: skip
    vision_settings.check_settings({**sampling, "source_fps": source_fps})
    return decode_video(source, sampling, resize_to, frame_sink, source_fps)


def decode_video(source, sampling: dict, resize_to=None, frame_sink=None, source_fps=None):
    """`load_video` on settings validated already (`check_settings`, or the video processor's `merge_settings`):
    `sampling` holds `fps`, `min_frames`, `max_frames`, `nframes`, `video_start`, `video_end` (seconds) and
    `temporal_patch_size`. Returns, errors and warnings as `load_video`; validates nothing."""
    if _is_frame_collection(source):
        return _load_frames_in_memory(source, sampling, source_fps, resize_to)
    return video_decoding.decode_file(source, sampling, resize_to, frame_sink)



def _is_frame_collection(source) -> bool:
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return True
    return isinstance(source, (list, tuple)) and len(source) > 0


def _load_frames_in_memory(source, sampling: dict, source_fps, resize_to):
    is_list = isinstance(source, (list, tuple))
    total = len(source) if is_list else int(source.shape[0])
    if total == 0:
        raise VideoLoadError("cannot use video: it has zero frames")
    rate = float(source_fps) if source_fps else float(sampling["fps"] or vision_settings.DEFAULT_FPS)
    times = np.arange(total) / rate
    window = video_decoding.time_window(times, sampling["video_start"], sampling["video_end"], "cannot use video")
    local, n = video_decoding.sample_frame_indices(
        int(window.size), rate, fps=sampling["fps"], min_frames=sampling["min_frames"],
        max_frames=sampling["max_frames"], num_frames=sampling["nframes"],
        temporal_patch_size=sampling["temporal_patch_size"],
    )  # fmt: skip
    indices = window[local]
    if is_list:
        video = image_processing.as_frames([source[i] for i in indices.tolist()])
    else:
        picked = source[torch.from_numpy(indices) if isinstance(source, torch.Tensor) else indices]
        video = image_processing.as_frames(picked)
    if video.dtype != torch.uint8:  # load_video returns uint8: 0-255 floats rounded
        video = video.to(torch.float32).round().clamp(0, 255).to(torch.uint8)
    height, width = video.shape[-2:]
    if resize_to is not None:
        video = image_processing.resize_frames(video, resize_to(n, height, width) if callable(resize_to) else resize_to)
    metadata = VideoMetadata(
        total_num_frames=int(window.size), fps=rate, width=int(width), height=int(height), video_backend="frames",
        frames_indices=[int(i) for i in indices], timestamps=[float(times[i]) for i in indices],
        num_sampled_frames=n, resized=resize_to is not None,
    )  # fmt: skip
    return np.ascontiguousarray(video.permute(0, 2, 3, 1).numpy()), metadata


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

class InternVideo3VideoProcessor(PatchLayoutMixin, vision_settings.VideoProcessorBase):
    r"""Videos -> `pixel_values_videos` [sum of t·h·w, 1536] float32, `video_grid_thw` [n_videos, 3] int64 and the
    timestamps the prompt shows (SPEC §7): PyAV decoding and sampling, the two pixel budgets, patchification.

    Frames are sampled at `fps` (clamped to [min_frames, max_frames], padded to a multiple of 2), resized during
    decoding (torchvision's antialiased bicubic, via torch) and streamed into the output rows, so a long clip never
    exists as a whole in uint8 or float. `pixel_values_videos` equals transformers' `Qwen3VLVideoProcessor` for the
    same frames and budget (tests/test_fidelity.py).

    Args:
        fps, min_frames, max_frames: sampling (frames per second of video; frame counts, before padding).
        video_budget: "per_frame" (default; qwen-vl-utils: `min_pixels` / `max_pixels` per frame, `total_pixels` for
            the clip) or "total" (transformers' `Qwen3VLVideoProcessor`: `size` bounds T×H×W).
        min_pixels, max_pixels, total_pixels: pixels of "per_frame" (defaults 131,072 / 786,432 per frame,
            117,964,800 per clip: 128-768 tokens per frame, ~115K tokens per clip). A bound given alone beyond the
            other's default wins (`max_pixels=32768` alone sets `min_pixels` to 32,768 / 1.05).
        size: {"shortest_edge", "longest_edge"} of "total", pixels of the T×H×W volume (default 4,096 / 25,165,824).
        resize_backend: "torch" (default, = transformers' `Qwen3VLVideoProcessor`) or "pil" (in-memory frames; files
            are always resized by the torch kernel while they decode).
        patch_size, temporal_patch_size, merge_size, image_mean, image_std (keywords): see `PatchLayoutMixin`.

    Raises:
        ValueError: a setting out of range, `min_pixels > max_pixels`, or an unknown `video_budget` (naming it).
    """

    model_input_names = ["pixel_values_videos", "video_grid_thw"]
    # save_pretrained writes auto_map {"AutoVideoProcessor": ...} and copies this file with its siblings
    _auto_class = "AutoVideoProcessor"

    def __init__(
        self,
        fps: float = vision_settings.DEFAULT_FPS,
        min_frames: int = vision_settings.DEFAULT_MIN_FRAMES,
        max_frames: int = vision_settings.DEFAULT_MAX_FRAMES,
        video_budget: str = "per_frame",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        total_pixels: int = vision_settings.VIDEO_TOTAL_PIXELS,
        size: dict | None = None,
        resize_backend: str = "torch",
        **kwargs,
    ):
        super().__init__(**self._set_layout(resize_backend, kwargs))
        self.fps = fps
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.video_budget = video_budget
        # `None`: not given, the default applies (and yields to a given bound it conflicts with)
        given = vision_settings.given_keys({"min_pixels": min_pixels, "max_pixels": max_pixels})
        self.min_pixels, self.max_pixels = vision_settings.resolve_bounds(
            [given], ("min_pixels",), ("max_pixels",), (vision_settings.VIDEO_MIN_PIXELS, vision_settings.VIDEO_MAX_PIXELS),
            yielded_low=vision_settings.yielded_min_pixels,
        )
        self.total_pixels = total_pixels
        self.size = dict(size) if size is not None else dict(vision_settings.VIDEO_SIZE)
        # a bad value in video_preprocessor_config.json fails at load time, naming the setting
        vision_settings.check_settings(self._own_settings(), explicit=("min_frames", "min_pixels", "max_pixels"))

    def _own_settings(self) -> dict:
        return {
            "fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames,
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "total_pixels": self.total_pixels,
            "size": dict(self.size), "video_budget": self.video_budget,
        }  # fmt: skip

    def merge_settings(self, *levels: dict | None) -> VisionSettings:
        """This processor's settings updated by `levels` (call-level keys, then one item's keys; `None` values are
        not set), merged in the documented order and validated once (keys: `VIDEO_SETTING_KEYS`).

        The budget is chosen by the most specific level that names one: its `video_budget`, else "total" for a
        `size`, else "per_frame" for `min_pixels` / `max_pixels` / `total_pixels` (so an item's `max_pixels` beats a
        call's `size`).

        Raises:
            ValueError: naming the setting, the value and the allowed range (`check_settings`).
        """
        own = self._own_settings()
        levels = [vision_settings.given_keys(level) for level in levels]
        settings = dict(own)
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
        settings["min_pixels"], settings["max_pixels"] = vision_settings.resolve_bounds(
            [own, *levels], ("min_pixels",), ("max_pixels",), (None, None), yielded_low=vision_settings.yielded_min_pixels
        )
        vision_settings.check_settings(settings, explicit={k for level in levels for k in level})
        return VisionSettings(settings)

    def target_size(self, num_frames: int, height: int, width: int, settings: dict | None = None) -> tuple[int, int]:
        """Resized (height, width) in pixels for a clip of `num_frames` sampled frames (before padding) of
        `height`×`width` pixels under `settings` (call-level keys, or settings from `merge_settings`).

        "per_frame" (qwen-vl-utils fetch_video): each frame gets at most its share of `total_pixels` (2 frames share
        a temporal patch) and at least `min_pixels`·1.05 as its upper bound, then the image rule. "total":
        transformers' Qwen3-VL volume rule (`smart_resize` of video_processing_qwen3_vl) over T×H×W.
        """
        merged = settings if isinstance(settings, VisionSettings) else self.merge_settings(settings)
        factor = self.factor
        explicit = self.explicit_size(merged)
        if explicit:
            return explicit
        if merged["video_budget"] == "total":
            if height < factor or width < factor:  # scaled up first, as transformers 5.x does (4.57 raises)
                scale = max(factor / height, factor / width)
                height, width = int(height * scale), int(width * scale)
            return vision_settings.smart_resize_volume(
                max(num_frames, self.temporal_patch_size), height, width, self.temporal_patch_size, factor,
                merged["size"]["shortest_edge"], merged["size"]["longest_edge"],
            )  # fmt: skip
        padded_frames = num_frames + (-num_frames % self.temporal_patch_size)
        # the per-frame rule is the image rule (identical for every frame with both sides >= factor / 2)
        max_pixels = max(
            min(merged["max_pixels"], merged["total_pixels"] / padded_frames * self.temporal_patch_size),
            int(merged["min_pixels"] * vision_settings.FRAME_PIXELS_SLACK),
        )
        return vision_settings.smart_resize(height, width, factor, merged["min_pixels"], max_pixels)

    def load_video(self, source, frame_sink=None, resize=True, **settings) -> tuple[np.ndarray | None, VideoMetadata]:
        """`load_video` with this processor's settings updated by `settings` (keys: `VIDEO_SETTING_KEYS`), frames
        resized during decoding to the budget size (so a long video never holds full-resolution frames;
        `resize=False` keeps the decoded size). `frame_sink`: see `load_video`. Raises as `load_video`."""
        return self.decode(source, self.merge_settings(settings), frame_sink, resize)

    def decode(self, source, settings: VisionSettings, frame_sink=None, resize=True, source_fps=None):
        """`decode_video` under settings from `merge_settings` (not validated again)."""
        sampling = {
            "fps": settings["fps"], "min_frames": settings["min_frames"], "max_frames": settings["max_frames"],
            "nframes": settings.get("nframes", settings.get("num_frames")), "video_start": settings.get("video_start"),
            "video_end": settings.get("video_end"), "temporal_patch_size": self.temporal_patch_size,
        }  # fmt: skip
        resize_to = (lambda n, h, w: self.target_size(n, h, w, settings)) if resize else None
        return decode_video(source, sampling, resize_to, frame_sink, source_fps or settings.get("source_fps"))

    def process(self, videos: list, metadata: list, settings: list[VisionSettings], do_sample_frames=None, do_resize=None):
        """(pixel_values_videos [N, 1536] float32, video_grid_thw [n, 3] int64, seconds per temporal patch, one list
        per video) for `videos` (files/URLs, frame lists, arrays [T, H, W, C] / [T, C, H, W]) with their metadata
        (or None) and one merged settings per video. See `InternVideo3Processor.__call__` for `do_sample_frames`
        and `do_resize`.

        Raises:
            VideoLoadError: a video with no frames or pixels, or one that cannot be decoded (naming it).
        """
        rows, grids, stamps = [], [], []
        factor = self.factor
        for video, meta, merged in zip(videos, metadata, settings):
            _check_not_empty(video, len(rows))
            writer = self.patch_writer()
            if isinstance(video, (str, os.PathLike)):
                # a file: frames stream from the decoder, resized (torch kernel, whatever the backend), straight into
                # the output rows: one float pass, no uint8 or float copy of the whole clip
                _, meta = self.decode(video, merged, frame_sink=writer, resize=do_resize is not False)
                patches, grid = writer.result()
                stamp = _metadata_timestamps(meta, grid[0] * self.temporal_patch_size, merged.get("fps") or self.fps)
            else:
                if isinstance(video, (list, tuple)) and video and isinstance(video[0], (str, os.PathLike)):
                    video, meta = self.decode(video, merged)  # frame image files
                elif do_sample_frames or (do_sample_frames is None and _frames_need_sampling(meta, len(video))):
                    video, meta = self.decode(video, merged, source_fps=_metadata_field(meta, "fps"))
                frames = image_processing.as_frames(video)
                num = frames.shape[0]
                stamp = _metadata_timestamps(meta, num, merged.get("fps") or self.fps)
                sampled = meta.num_sampled_frames if isinstance(meta, VideoMetadata) and meta.num_sampled_frames else num
                height, width = frames.shape[-2:]
                already = isinstance(meta, VideoMetadata) and meta.resized and height % factor == 0 == width % factor
                if not already and do_resize is not False:
                    target = self.target_size(sampled, height, width, merged)
                    frames = image_processing.resize_frames(frames, target, self.resize_backend)
                slots = num + (-num % self.temporal_patch_size)
                for i, frame in enumerate(frames):
                    writer([i] if i < num - 1 else list(range(i, slots)), frame, slots)
                patches, grid = writer.result()
            rows.append(patches)
            grids.append(grid)
            stamps.append(video_decoding.group_timestamps(stamp, self.temporal_patch_size))
        # one video (the usual request): its rows are the output, no copy of the whole clip
        pixel_values = rows[0] if len(rows) == 1 else torch.cat(rows)
        return pixel_values, torch.tensor(grids, dtype=torch.long), stamps

    def preprocess(
        self, videos, video_metadata=None, do_sample_frames=None, do_resize=None, return_tensors="pt", **settings
    ) -> BatchFeature:
        """`pixel_values_videos` and `video_grid_thw` of a video or a list of videos (as `process`); `settings`:
        this call's budget (`VIDEO_SETTING_KEYS`). Raises TypeError on an unknown keyword, else as `process`."""
        unknown = set(settings) - set(vision_settings.VIDEO_SETTING_KEYS)
        if unknown:
            raise TypeError(f"InternVideo3VideoProcessor got unexpected keyword arguments: {sorted(unknown)}")
        videos = as_video_list(videos)
        metadata = as_list(video_metadata, len(videos), "video_metadata")
        merged = self.merge_settings(settings)
        pixel_values, grids, _ = self.process(videos, metadata, [merged] * len(videos), do_sample_frames, do_resize)
        return self._batch({"pixel_values_videos": pixel_values, "video_grid_thw": grids}, return_tensors)

    def __call__(self, videos, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)


def as_video_list(videos) -> list:
    """One video or a list of them -> a list of videos (a list of frames, PIL or 3-D arrays, is one video)."""
    if isinstance(videos, (str, os.PathLike)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        return [videos] if videos.ndim == 4 else list(videos)
    videos = list(videos)
    if videos and (isinstance(videos[0], Image.Image) or (hasattr(videos[0], "ndim") and videos[0].ndim == 3)):
        return [videos]  # one video given as a list of frames
    return videos


def as_list(value, n: int, name: str) -> list:
    """`value` as one entry per video (None -> n Nones). Raises ValueError when the counts differ (naming `name`)."""
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"got {len(value)} {name} entries for {n} videos")
        return list(value)
    if n != 1:
        raise ValueError(f"got one {name} entry for {n} videos")
    return [value]
