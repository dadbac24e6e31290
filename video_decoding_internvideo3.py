"""InternVideo3 video decoding: PyAV demuxing and decoding, frame sampling and timestamps (SPEC §7).

No torchvision, torchcodec or decord: on a fresh pip environment neither transformers' Qwen3-VL video loader nor
qwen-vl-utils can open a file (they need torchcodec and FFmpeg); PyAV (`av`) ships FFmpeg in its wheel and is
imported only when a file is decoded.

    file --demux-only pass--> every frame's pts, keyframes --sampling (fps, min/max_frames, window)--> wanted pts
         --decode pass (video_frames_internvideo3.py: seeks to the keyframe before a wanted frame; far-apart spans
           decoded by one thread each, on its own container; a resizing thread)-->
         kept frames uint8 [h, w, 3] (oriented, resized) -> a sink (a preallocated array, or the patch writer)

`decode_file` decodes on settings validated already; the public `load_video` (video_processing_internvideo3.py)
validates, and takes in-memory frames too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
from transformers.video_utils import VideoMetadata as _TransformersVideoMetadata

# Flat sibling modules: in a Hub folder they form a generated package, of which transformers copies the siblings
# named in a module's `from .name import` lines (4.57: only those of the module it loads, so each entry module
# names every sibling it needs that way); in a checkout or an installed package they are top-level modules.
try:
    from .video_frames_internvideo3 import (
        DecodeRequest, DecodeResult, VideoLoadError, av_errors, decode_frames, open_video,
    )  # fmt: skip
    from .vision_settings_internvideo3 import DEFAULT_FPS
    from . import vision_settings_internvideo3 as vision_settings
except ImportError:
    from video_frames_internvideo3 import (
        DecodeRequest, DecodeResult, VideoLoadError, av_errors, decode_frames, open_video,
    )  # fmt: skip
    from vision_settings_internvideo3 import DEFAULT_FPS
    import vision_settings_internvideo3 as vision_settings

__all__ = [
    "DecodeRequest",
    "DecodeResult",
    "TruncatedVideoWarning",
    "VideoLoadError",
    "VideoMetadata",
    "decode_file",
    "decode_frames",
    "group_timestamps",
    "sample_frame_indices",
]


class TruncatedVideoWarning(UserWarning):
    """A video file holds clearly less than its container declares (e.g. a partly downloaded mp4 whose index sits at
    the front): only the frames that exist are used. The message names the file and gives declared vs present
    seconds and frames. Make it an error with `warnings.simplefilter("error", TruncatedVideoWarning)` (a processor
    loaded with `AutoProcessor` carries the class as `processor.TruncatedVideoWarning`); it is then raised from
    `load_video` / the processor call."""


# Numeric settings: (kind, lower bound, lower bound inclusive, unit). Checked where settings are merged
# (`InternVideo3Processor._video_settings` / `image_target_size`, and the public `load_video`): a zero or negative

# ---------------------------------------------------------------------------------------------------------------
# Frame sampling and timestamps (SPEC §7)
# ---------------------------------------------------------------------------------------------------------------
def sample_frame_indices(
    total_num_frames: int,
    source_fps: float | None,
    fps: float | None = DEFAULT_FPS,
    min_frames: int = vision_settings.DEFAULT_MIN_FRAMES,
    max_frames: int = vision_settings.DEFAULT_MAX_FRAMES,
    num_frames: int | None = None,
    temporal_patch_size: int = vision_settings.TEMPORAL_PATCH_SIZE,
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


def group_timestamps(
    timestamps: Sequence[float], temporal_patch_size: int = vision_settings.TEMPORAL_PATCH_SIZE
) -> list[float]:
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


def _download(url: str, directory: str) -> str:
    """Fetch an http(s) video once into `directory` (so both decoding passes read a local, seekable file)."""
    import urllib.request  # noqa: PLC0415

    name = os.path.basename(url.split("?", 1)[0]) or "video"
    path = os.path.join(directory, name)
    try:
        with urllib.request.urlopen(url, timeout=vision_settings.NETWORK_TIMEOUT_S) as response, open(path, "wb") as out:
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


def _presentation_pts(
    av, path: str, label: str
) -> tuple[list[int], Fraction, float | None, int, bool, list[int]]:
    """First pass: demux only (no decoding) to list every frame's presentation timestamp, sorted.

    Sorting by pts puts frames in presentation order even when the container stores them out of order (B-frames,
    files like decord's unordered.mov). Returns (sorted pts, time_base, average fps, stream index, numbered,
    keyframe pts sorted): with `numbered` the stream had no timestamps and frames are numbered in decoding order
    instead (and the keyframe list is empty: nothing to seek to).
    """
    with open_video(av, path, label) as container:
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
        except av_errors(av) as error:
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
    with open_video(av, path, label) as container:
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
    tolerance = vision_settings.VFR_INTERVAL_TOLERANCE * median
    vfr = bool(total > 2 and median > 0 and np.max(np.abs(diffs - median)) > tolerance)
    if not source_fps:
        source_fps = (total - 1) / (times[-1] - times[0]) if total > 1 and times[-1] > times[0] else 1.0
    indices, n = sample_frame_indices(
        total,
        source_fps,
        fps=settings.get("fps", DEFAULT_FPS),
        min_frames=settings.get("min_frames", vision_settings.DEFAULT_MIN_FRAMES),
        max_frames=settings.get("max_frames", vision_settings.DEFAULT_MAX_FRAMES),
        num_frames=settings.get("nframes", settings.get("num_frames")),
        temporal_patch_size=settings.get("temporal_patch_size", vision_settings.TEMPORAL_PATCH_SIZE),
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


def time_window(times: np.ndarray, video_start, video_end, what: str) -> np.ndarray:
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




def decode_file(source, sampling: dict, resize_to=None, frame_sink=None) -> tuple[np.ndarray | None, VideoMetadata]:
    """Decode and sample one video file or URL (`load_video` of video_processing_internvideo3 for a file) on
    settings validated already: `sampling` holds `fps`, `min_frames`, `max_frames`, `nframes`, `video_start`,
    `video_end` (seconds) and `temporal_patch_size`. `resize_to`, `frame_sink`, the returns, errors and warnings:
    as `load_video`. Validates nothing."""
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
        window = time_window(times, sampling["video_start"], sampling["video_end"], f"cannot decode video {label!r}")
        local, stamps, n, vfr, rate = _choose_frames(times[window], rate, sampling)
        indices = window[local]

        wanted: dict[int, list[int]] = {}
        for slot, index in enumerate(indices.tolist()):
            wanted.setdefault(all_pts[index], []).append(slot)
        collector = _FrameCollector() if frame_sink is None else None
        request = DecodeRequest(
            path, label, stream_index, all_pts, numbered, keyframes, len(indices), n, resize_to,
            frame_sink or collector,
        )  # fmt: skip
        result = decode_frames(av, request, wanted)
        if not result.decoded_pts:
            raise VideoLoadError(f"cannot decode video {label!r}: no frame could be decoded")
        if not all(result.delivered):
            # the decoder dropped some listed frames: take the nearest decoded ones (a third, rare pass, sequential)
            decoded = np.array(sorted(set(result.decoded_pts)))
            remap: dict[int, list[int]] = {}
            for slot, index in enumerate(indices.tolist()):
                if result.delivered[slot]:
                    continue
                p = all_pts[index]
                j = int(np.clip(np.searchsorted(decoded, p), 1, len(decoded) - 1)) if len(decoded) > 1 else 0
                nearest = decoded[j] if abs(decoded[j] - p) < abs(decoded[j - 1] - p) else decoded[j - 1]
                remap.setdefault(int(nearest), []).append(slot)
            again = decode_frames(av, dataclasses.replace(request, keyframes=()), remap, result.shape)
            if not all(a or b for a, b in zip(result.delivered, again.delivered)):
                raise VideoLoadError(f"cannot decode video {label!r}: sampled frames could not be decoded")
            result = dataclasses.replace(again, delivered=[True] * len(indices))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    height, width = result.shape
    metadata = VideoMetadata(
        total_num_frames=int(window.size),
        fps=rate,
        width=int(width),
        height=int(height),
        frames_indices=[int(i) for i in indices],
        timestamps=[float(t) for t in stamps],
        num_sampled_frames=n,
        source=label,
        rotation=int(round(result.rotation)),
        resized=result.target is not None,
        variable_frame_rate=vfr,
    )
    return (collector.frames if collector is not None else None), metadata



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
