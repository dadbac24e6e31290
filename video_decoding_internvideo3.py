"""InternVideo3 video decoding: PyAV demuxing and decoding, frame sampling and timestamps (SPEC §7).

No torchvision, torchcodec or decord: on a fresh pip environment neither transformers' Qwen3-VL video loader nor
qwen-vl-utils can open a file (they need torchcodec and FFmpeg); PyAV (`av`) ships FFmpeg in its wheel and is
imported only when a file is decoded.

    file --demux-only pass--> every frame's pts, keyframes --sampling (fps, min/max_frames, window)--> wanted pts
         --decode pass (seeks to the keyframe before a wanted frame; far-apart spans decoded by one thread each,
           on its own container; a resizing thread)-->
         kept frames uint8 [h, w, 3] (oriented, resized) -> a sink (a preallocated array, or the patch writer)

`decode_file` decodes on settings validated already; the public `load_video` (video_processing_internvideo3.py)
validates, and takes in-memory frames too.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import torch
from transformers.video_utils import VideoMetadata as _TransformersVideoMetadata

# Flat sibling modules: in a Hub folder they form a generated package, of which transformers copies the siblings
# named in a module's `from .name import` lines (4.57: only those of the module it loads, so each entry module
# names every sibling it needs that way); in a checkout or an installed package they are top-level modules.
try:
    from .image_processing_internvideo3 import resize_frames
    from .vision_settings_internvideo3 import DEFAULT_FPS
    from . import vision_settings_internvideo3 as vision_settings
except ImportError:
    from image_processing_internvideo3 import resize_frames
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


def _open(av, path: str, label: str):
    try:
        if "://" in path:
            return av.open(path, mode="r", timeout=vision_settings.NETWORK_TIMEOUT_S)
        return av.open(path, mode="r")
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




# ---------------------------------------------------------------------------------------------------------------
# The decode pipeline: decoding threads (this one, and one per further span) and a resizing thread, joined by a
# short queue
# ---------------------------------------------------------------------------------------------------------------
# RGB frames at the decoded size queued between the two threads: 2 keep both busy on two cores (issue 18's
# measurement, bench/RESULTS.md); how often the resizing thread checks that it should stop, in seconds.
DECODE_QUEUE_FRAMES = 2
DECODE_QUEUE_POLL_S = 0.05
# Kept frames resized per `resize_frames` call: one call per batch rather than per frame means fewer thread-pool
# barriers, which dominate on a busy machine (bench/bench_preprocess.py).
RESIZE_BATCH_FRAMES = 4
# Threads (each with its own container) that decode far-apart spans of a seeking pass, at most one per core:
# FFmpeg's frame threads restart after every seek and H.264 decoding scales to about 1.5x on two cores with them
# (issue 26's measurement), so separate spans fill the cores; more than 4 gain little for the memory of each
# decoder's frame pool.
MAX_DECODE_SPANS = 4


@dataclass
class DecodeRequest:
    """One file's decode pass: what to decode and where the kept frames go (built by `decode_video`).

    Attributes:
        path: local path or URL PyAV opens; `label`: how messages name it (the caller's path or URL).
        stream_index: the video stream to decode. all_pts: every frame's presentation timestamp, sorted (the demux
            pass). numbered: the stream has no timestamps; frames are numbered in decoding order (`all_pts` then
            holds 0..N-1). keyframes: keyframe pts, sorted; with two or more (and not `numbered`) the pass seeks.
        num_slots: output frame positions (a multiple of the temporal patch size); num_sampled: count before padding.
        resize_to: (height, width) in pixels, a callable (num_sampled, height, width) -> (height, width) on the
            displayed size, or None (decoded size).
        sink: `sink(slots, frame, num_slots)` receives each kept frame, uint8 [h, w, 3], oriented and resized.
    """

    path: str
    label: str
    stream_index: int
    all_pts: list[int]
    numbered: bool
    keyframes: Sequence[int]
    num_slots: int
    num_sampled: int
    resize_to: tuple[int, int] | Callable[[int, int, int], tuple[int, int]] | None
    sink: Callable[[Sequence[int], np.ndarray, int], None]


@dataclass
class DecodeResult:
    """What a decode pass delivered: `delivered` (one flag per output slot), `decoded_pts` (pts of every frame it
    decoded, in output order), `rotation` (degrees counter-clockwise, applied), `shape` (displayed (height, width)
    in pixels) and `target` (the resize target, None when not resized)."""

    delivered: list[bool]
    decoded_pts: list[int]
    rotation: float
    shape: tuple[int, int] | None
    target: tuple[int, int] | None


class _SeekingNotExact(Exception):
    """A seeking pass met something only sequential decoding numbers exactly (a frame without pts)."""


class _ResizeStage:
    """The pipeline's second thread: (slots, RGB frame [H, W, 3] uint8) items from a queue of at most
    `DECODE_QUEUE_FRAMES` -> resized `RESIZE_BATCH_FRAMES` at a time -> `request.sink`. On two cores resizing then
    overlaps decoding instead of following it (the heavy steps release the GIL).

    `shape` (the displayed size) is taken from the first frame unless an earlier pass gave it; a frame of another
    size (a resolution change mid-stream) is first resized to it. An error in this thread is kept in `error` (the
    decoding thread raises it) and the queue drained, never blocked. A daemon thread: even one that was never joined
    cannot keep the interpreter from exiting."""

    def __init__(self, request: DecodeRequest, shape: tuple[int, int] | None):
        self.request = request
        self.shape = shape
        self.target: tuple[int, int] | None = None
        self.target_chosen = False  # `target` is None both before the first frame and when nothing is resized
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=DECODE_QUEUE_FRAMES)
        self.stop = threading.Event()
        self.buffer: np.ndarray | None = None
        self.buffered_slots: list[Sequence[int]] = []
        self.thread = threading.Thread(target=self._run, name="internvideo3-resize", daemon=True)
        self.thread.start()

    def put(self, slots: Sequence[int], array: np.ndarray) -> bool:
        """Queue one frame (waits while the queue is full); False when the stage has stopped (aborted, or its
        thread ended), so no decoding thread waits on a queue nobody reads."""
        while True:
            if self.stop.is_set() or not self.thread.is_alive():
                return False
            try:
                self.queue.put((slots, array), timeout=DECODE_QUEUE_POLL_S)
                return True
            except queue.Full:
                continue

    def finish(self) -> None:
        """The end of the frames: the thread resizes what is queued and buffered, then stops."""
        self.queue.put(None)
        self.thread.join()

    def abort(self) -> None:
        """Stop at once (the decoding thread failed or was interrupted), waiting for the thread through further
        Ctrl-C (it stops within one frame), so no thread outlives the call waiting for frames."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.thread.join()
            except KeyboardInterrupt:
                continue

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=DECODE_QUEUE_POLL_S)
            except queue.Empty:
                continue
            if item is None:
                break
            if self.error is not None:
                continue
            try:
                self._add(*item)
            except BaseException as error:  # noqa: BLE001 - re-raised by the decoding thread
                self.error = error
        if self.error is None and not self.stop.is_set():
            try:
                self._flush()
            except BaseException as error:  # noqa: BLE001
                self.error = error

    def _add(self, slots: Sequence[int], array: np.ndarray) -> None:
        request = self.request
        if self.shape is None:
            self.shape = array.shape[:2]
        if not self.target_chosen:
            resize_to = request.resize_to
            target = resize_to(request.num_sampled, *self.shape) if callable(resize_to) else resize_to
            self.target = tuple(target) if target is not None else None
            self.target_chosen = True
        if array.shape[:2] != tuple(self.shape):
            array = resize_frames(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None], self.shape)
            array = array[0].permute(1, 2, 0).numpy()
        if (self.target or tuple(self.shape)) == tuple(self.shape):
            request.sink(slots, np.ascontiguousarray(array), request.num_slots)
            return
        if self.buffer is None:
            self.buffer = np.empty((RESIZE_BATCH_FRAMES, *array.shape), dtype=array.dtype)
        self.buffer[len(self.buffered_slots)] = array  # also makes PyAV's padded rows contiguous (the fast kernel)
        self.buffered_slots.append(slots)
        if len(self.buffered_slots) == RESIZE_BATCH_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if not self.buffered_slots:
            return
        batch = torch.from_numpy(self.buffer[: len(self.buffered_slots)]).permute(0, 3, 1, 2)
        resized = resize_frames(batch, self.target).permute(0, 2, 3, 1).numpy()  # [n, h, w, 3] contiguous
        for slots, frame in zip(self.buffered_slots, resized):
            self.request.sink(slots, frame, self.request.num_slots)
        self.buffered_slots = []


def decode_frames(av, request: DecodeRequest, wanted: dict[int, list[int]], shape=None) -> DecodeResult:
    """Decode pass: hand only the frames whose pts are in `wanted` (pts -> output slots) to `request.sink`,
    converted to RGB, with the display matrix applied, resized to `request.resize_to` (memory: the kept frames
    only). With two or more keyframes (and not `numbered`) only what the wanted frames need is decoded (a seeking
    pass, whose far-apart spans are decoded in parallel, one thread and container each, up to one per core), else
    every frame up to the last wanted one. The frames are the same either way: when the seeking pass
    fails to deliver a frame, meets a frame without pts, or a decoding error, the sequential pass runs instead (and
    reports, or raises, exactly what it always did). `shape`: the displayed size of an earlier pass, kept.

    Raises:
        VideoLoadError: the data cannot be decoded (names the file).
    """
    if len(request.keyframes) > 1 and not request.numbered:
        try:
            result = _decode_pass(av, request, wanted, shape, seeking=True)
        except (_SeekingNotExact, VideoLoadError):
            result = None
        if result is not None and all(result.delivered):
            return result
    return _decode_pass(av, request, wanted, shape, seeking=False)


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _span_threads() -> int:
    """Decoding threads for far-apart spans: one per core, at most `MAX_DECODE_SPANS`."""
    return max(1, min(_cores(), MAX_DECODE_SPANS))


def split_spans(order: Sequence[int], keyframes: Sequence[int], all_pts: Sequence[int], count: int) -> list[list[int]]:
    """Wanted pts (sorted, presentation order) -> at most `count` contiguous spans that decode independently.

    A span may start only before a wanted frame whose keyframe lies past the previous wanted frame: the seeking pass
    seeks there anyway, so a span that seeks to that keyframe on its own container decodes nothing twice and gives
    the same frames. The cuts are placed so each span decodes about the same number of frames (from the keyframe,
    or from the previous wanted frame, up to each wanted frame; unreferenced frames are not told apart). Returns
    [list(order)] when there is no such place or `count` < 2."""
    order = list(order)
    if count < 2 or len(order) < 2 or len(keyframes) < 2:
        return [order]
    cuts, total = [], 0  # cuts: (frames to decode before it, index in `order`)
    for i, p in enumerate(order):
        at = bisect.bisect_left(all_pts, p)
        key = keyframes[max(bisect.bisect_right(keyframes, p) - 1, 0)]
        if i and key > order[i - 1]:
            cuts.append((total, i))
            total += at - bisect.bisect_left(all_pts, key) + 1
        else:
            total += at - (bisect.bisect_left(all_pts, order[i - 1]) if i else bisect.bisect_left(all_pts, key)) + 1
    starts = [0]
    for k in range(1, count):
        goal = total * k / count
        best = min((c for c in cuts if c[1] > starts[-1]), key=lambda c: abs(c[0] - goal), default=None)
        if best is not None and best[0] < total:
            starts.append(best[1])
    starts = sorted(set(starts))
    return [order[a:b] for a, b in zip(starts, starts[1:] + [len(order)])]


def _decode_pass(av, request: DecodeRequest, wanted: dict[int, list[int]], shape, seeking: bool) -> DecodeResult:
    """One pass of `decode_frames`. Sequential (`seeking=False`): one thread decodes from the start. Seeking: the
    wanted frames are cut into spans (`split_spans`), one per core, each decoded by its own thread on its own
    container (this thread takes the first): FFmpeg's frame threads refill after every seek and one frame-threaded
    decoder used 1.5 of two cores (issue 26). All feed one `_ResizeStage`. The frames are the same
    as one span's: the stage takes its size from the first span's first frame (the others wait for it before
    handing over a frame), and every frame goes to its own output slots.

    An error in any span stops the others (each checks between packets) and is raised here once all have stopped,
    this thread's first; Ctrl-C likewise, so no thread outlives the call."""
    order = sorted(wanted)
    spans = split_spans(order, request.keyframes, request.all_pts, _span_threads()) if seeking else [order]
    delivered = [False] * request.num_slots
    stage = _ResizeStage(request, shape)
    cancel, first_put = threading.Event(), threading.Event()
    if shape is not None or len(spans) == 1:
        first_put.set()
    outcomes: list[tuple[list[int], tuple | None] | BaseException | None] = [None] * len(spans)
    # one span: FFmpeg's frame + slice threads (its automatic count); several: the cores shared out among them
    # (on two cores two single-threaded decoders beat two frame-threaded ones, bench/RESULTS.md)
    ffmpeg_threads = 0 if len(spans) == 1 else max(1, _cores() // len(spans))

    def run(index: int) -> None:
        span_wanted = {p: wanted[p] for p in spans[index]}
        try:
            outcomes[index] = _decode_span(
                av, request, span_wanted, stage, seeking, delivered, cancel, first_put, index == 0, ffmpeg_threads
            )
        except BaseException as error:  # noqa: BLE001 - raised by the calling thread
            outcomes[index] = error
            cancel.set()
        finally:
            if index == 0:
                first_put.set()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"internvideo3-decode-{i}", daemon=True) for i in range(1, len(spans))
    ]
    try:
        for thread in threads:
            thread.start()
        run(0)
        _join(threads)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        stage.finish()
    except BaseException:
        # an error or Ctrl-C here (also a second one while this cleans up) must not leave a thread waiting
        cancel.set()
        _join(threads)
        stage.abort()
        raise
    if stage.error is not None:
        raise stage.error
    seen = [p for outcome in outcomes for p in outcome[0]]
    orientation = next((outcome[1] for outcome in outcomes if outcome[1] is not None), None)
    rotation = orientation[0] if orientation else 0.0
    return DecodeResult(delivered, seen, rotation, stage.shape, stage.target)


def _join(threads: Sequence[threading.Thread]) -> None:
    """Wait for `threads` (which stop within one packet once cancelled), through further Ctrl-C."""
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                continue


def _decode_span(
    av,
    request: DecodeRequest,
    wanted: dict[int, list[int]],
    stage: _ResizeStage,
    seeking: bool,
    delivered: list[bool],
    cancel: threading.Event,
    first_put: threading.Event,
    first: bool,
    ffmpeg_threads: int,
) -> tuple[list[int], tuple | None]:
    """Decode one span of `_decode_pass` on its own container: the frames whose pts are in `wanted` go, as RGB, to
    `stage` (after `first_put` is set, unless this is the `first` span, which sets it with its first frame). Without
    `seeking`: from the start; frames without a pts (or every frame when `numbered`) take the next entry of
    `all_pts`. Seeking: whenever the keyframe before the next wanted frame lies beyond every packet read so far, seek
    to it (the frames in between are not needed: a keyframe starts a fresh decode, so the frames after it come out
    bit for bit as in sequential decoding), and packets of frames that are not wanted are decoded with
    `skip_frame="NONREF"` (a frame no other frame references is then not decoded at all; reference frames are, so
    wanted frames are unchanged); raises `_SeekingNotExact` on a frame without pts. Only wanted frames are
    converted to RGB, on this thread (with `ffmpeg_threads` other than 1, FFmpeg's frame and slice threads decode
    under it; 0: FFmpeg's automatic count). Returns (pts of every frame
    decoded, in output order; orientation of the first wanted frame or None)."""
    keyframes = request.keyframes if seeking else None
    all_pts, numbered = request.all_pts, request.numbered
    remaining = sum(len(slots) for slots in wanted.values())
    seen: list[int] = []
    orientation = None
    with _open(av, request.path, request.label) as container:
        stream = container.streams[request.stream_index]
        stream.thread_count = ffmpeg_threads  # 0: FFmpeg's automatic count
        if ffmpeg_threads != 1:
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
                    if cancel.is_set():
                        return seen, orientation
                    if keyframes is not None:
                        if packet.pts is not None:
                            read_up_to = packet.pts if read_up_to is None else max(read_up_to, packet.pts)
                        wanted_packet = packet.pts is None or packet.pts in wanted
                        stream.codec_context.skip_frame = "DEFAULT" if wanted_packet else "NONREF"
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
                        slots = wanted.get(int(pts))
                        if not slots or delivered[slots[0]]:
                            continue
                        if orientation is None:
                            # once per span: reading `frame.side_data` makes PyAV keep that frame alive until the
                            # cyclic garbage collector runs (hundreds of MB over a long 1080p clip)
                            orientation = _rotation_of(frame, stream)
                        array = _orient(frame.to_ndarray(format="rgb24"), *orientation)
                        del frame
                        if not first:
                            while not first_put.wait(DECODE_QUEUE_POLL_S):
                                if cancel.is_set():
                                    return seen, orientation
                        if not stage.put(slots, array):
                            return seen, orientation  # the stage stopped
                        if first:
                            first_put.set()
                        for slot in slots:
                            delivered[slot] = True
                        remaining -= len(slots)
                    if remaining <= 0 or stage.error is not None:
                        packets = None
                        break
                    if seek_target() is not None:
                        break  # seek, then read on from there
                else:
                    packets = None  # end of the stream
        except _av_errors(av) as error:
            raise VideoLoadError(f"cannot decode video {request.label!r}: {error}") from error
    return seen, orientation


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
