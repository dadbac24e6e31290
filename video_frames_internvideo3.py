"""InternVideo3 video frames: the decode pass of a video file, from PyAV's container to oriented RGB frames, a
resizing thread and a sink (SPEC §7). Which frames to decode (demuxing, sampling, timestamps) is
video_decoding_internvideo3.py's.

    wanted pts --seeking pass: far-apart spans, one thread and container each (or one sequential pass)-->
         RGB frames [H, W, 3] uint8, oriented --resizing thread (`_ResizeStage`)--> sink(slots, frame, num_slots)
"""

from __future__ import annotations

import bisect
import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

# Flat sibling modules: in a Hub folder they form a generated package, of which transformers copies the siblings
# named in a module's `from .name import` lines (4.57: only those of the module it loads, so each entry module
# names every sibling it needs that way); in a checkout or an installed package they are top-level modules.
try:
    from .image_processing_internvideo3 import resize_frames
    from . import vision_settings_internvideo3 as vision_settings
except ImportError:
    from image_processing_internvideo3 import resize_frames
    import vision_settings_internvideo3 as vision_settings

__all__ = ["DecodeRequest", "DecodeResult", "VideoLoadError", "av_errors", "decode_frames", "open_video", "split_spans"]


class VideoLoadError(ValueError):
    """A video could not be opened or decoded (corrupt, empty, no video stream, zero frames). The message names the
    file or URL and the reason."""


def av_errors(av) -> tuple[type[BaseException], ...]:
    """The exception classes PyAV raises for unreadable data (they moved between PyAV versions), plus EOFError."""
    errors = [getattr(getattr(av, "error", None), "FFmpegError", None), getattr(av, "AVError", None)]
    return tuple(e for e in errors if isinstance(e, type)) + (EOFError,)


def open_video(av, path: str, label: str):
    """`av.open(path)` for reading (a network timeout for URLs). Raises VideoLoadError naming `label`."""
    try:
        if "://" in path:
            return av.open(path, mode="r", timeout=vision_settings.NETWORK_TIMEOUT_S)
        return av.open(path, mode="r")
    except av_errors(av) + (OSError, ValueError) as error:
        raise VideoLoadError(f"cannot open video {label!r}: {error}") from error


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


# ---------------------------------------------------------------------------------------------------------------
# The decode pipeline: decoding threads (this one, and one per further span) and a resizing thread, joined by a
# short queue
# ---------------------------------------------------------------------------------------------------------------
# RGB frames at the decoded size queued for the resizing thread: 2 keep decoding and resizing busy on two cores
# (issue 18's measurement, bench/RESULTS.md); how often the resizing thread checks that it should stop, in seconds.
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
    """One file's decode pass: what to decode and where the kept frames go (built by `decode_file`).

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
    """The pipeline's resizing thread: (slots, RGB frame [H, W, 3] uint8) items from a queue of at most
    `DECODE_QUEUE_FRAMES` -> resized `RESIZE_BATCH_FRAMES` at a time -> `request.sink`. On two cores resizing then
    overlaps decoding instead of following it (the heavy steps release the GIL).

    `shape` (the displayed size) is taken from the first frame unless an earlier pass gave it; a frame of another
    size (a resolution change mid-stream) is first resized to it. An error in this thread is kept in `error`
    (`_decode_pass` raises it) and the queue drained, never blocked. A daemon thread: even one that was never joined
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
    cuts, total, last = [], 0, 0  # cuts: (frames decoded before it, index in `order`); last: the previous frame's
    for i, p in enumerate(order):
        at = bisect.bisect_left(all_pts, p)  # this frame's index in `all_pts`
        key = keyframes[max(bisect.bisect_right(keyframes, p) - 1, 0)]
        if i == 0 or key > order[i - 1]:  # decoding (re)starts at the keyframe
            if i:
                cuts.append((total, i))
            start = bisect.bisect_left(all_pts, key)
        else:
            start = last
        total += at - start + 1
        last = at
    starts = [0]
    for k in range(1, count):
        later = [cut for cut in cuts if cut[1] > starts[-1]]
        if later:
            starts.append(min(later, key=lambda cut: abs(cut[0] - total * k / count))[1])
    return [order[a:b] for a, b in zip(starts, starts[1:] + [len(order)])]


def _decode_pass(av, request: DecodeRequest, wanted: dict[int, list[int]], shape, seeking: bool) -> DecodeResult:
    """One pass of `decode_frames`. Sequential (`seeking=False`): one thread decodes from the start. Seeking: the
    wanted frames are cut into spans (`split_spans`), one per core (why: `MAX_DECODE_SPANS`), each decoded by its
    own thread on its own container (this thread takes the first). All feed one `_ResizeStage`. The frames are the
    same as one span's: the stage takes its size from the first span's first frame (the others wait for it before
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
    under it; 0: FFmpeg's automatic count). Returns (pts of every frame decoded, in output order; orientation of
    the first wanted frame or None)."""
    keyframes = request.keyframes if seeking else None
    all_pts, numbered = request.all_pts, request.numbered
    remaining = sum(len(slots) for slots in wanted.values())
    seen: list[int] = []
    orientation = None
    with open_video(av, request.path, request.label) as container:
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
        except av_errors(av) as error:
            raise VideoLoadError(f"cannot decode video {request.label!r}: {error}") from error
    return seen, orientation
