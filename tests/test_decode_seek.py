"""Issue 26, item 4: the PyAV decode pass decodes only what the sampled frames need (seeks to the keyframe before a
sampled frame once that keyframe lies past what was read, skips unreferenced unsampled frames), and the frames are
bit for bit those of sequential decoding. Real clips from tests/data/videos plus a small long-GOP H.264 clip
generated here with PyAV (keyframe every 50 frames, B-frames)."""

from __future__ import annotations

import av
import numpy as np
import pytest

import video_decoding_internvideo3 as D
import video_frames_internvideo3 as F
import video_processing_internvideo3 as P

GOP = 50
LONG_FRAMES = 64 * 60  # 64 frames sampled from it lie 60 apart: more than one GOP


@pytest.fixture(scope="module")
def long_gop_clip(tmp_path_factory):
    """3,840 frames, 64x48, 30 fps H.264 (libx264, B-frames), a keyframe exactly every 50 frames; every frame
    differs (a moving pattern plus its index in binary), so a wrong frame cannot pass for the right one."""
    path = tmp_path_factory.mktemp("long_gop") / f"long_gop_{GOP}.mp4"
    y, x = np.mgrid[0:48, 0:64]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bframes": "3"}
        for i in range(LONG_FRAMES):
            image = np.stack([(x * 4 + i * 3) % 256, (y * 5 + i * 7) % 256, np.full_like(x, (i * 11) % 256)], -1)
            bits = (i >> np.arange(12)) & 1  # the frame index as 12 blocks of 4 pixels, black or white
            image[:8, : 12 * 4] = np.repeat(bits * 255, 4)[None, :, None]
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _sequential(monkeypatch):
    """Make `load_video` decode as it did before seeking existed: the demux pass reports no keyframes."""
    original = D._presentation_pts

    def no_keyframes(*args, **kwargs):
        *rest, _ = original(*args, **kwargs)
        return (*rest, [])

    monkeypatch.setattr(D, "_presentation_pts", no_keyframes)


def _decoded_counter(monkeypatch) -> list[int]:
    """Spy (not a stand-in) on `decode_frames`: the number of frames each call decoded (its returned pts list)."""
    counts: list[int] = []
    original = D.decode_frames

    def counting(*args, **kwargs):
        result = original(*args, **kwargs)
        counts.append(len(result.decoded_pts))
        return result

    monkeypatch.setattr(D, "decode_frames", counting)
    return counts


SETTINGS = [
    {},  # defaults: fps 2
    {"fps": None, "max_frames": 64},
    {"nframes": 64},
    {"fps": 0.5},
    {"fps": 30, "max_frames": 768},
    {"video_start": 1.0, "video_end": 3.0, "nframes": 6},
    {"video_start": 40.0, "nframes": 16},
]


def _load_or_error(path, settings):
    try:
        return P.load_video(path, **settings)
    except (ValueError, P.VideoLoadError) as error:
        return error


def _clips(videos_dir):
    return sorted(p for p in videos_dir.iterdir() if p.suffix in (".mp4", ".mkv", ".mov"))


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_seeking_decode_gives_the_sequential_frames(videos_dir, long_gop_clip, monkeypatch, settings):
    """Every shipped clip and the long-GOP clip, several sampling settings: frames (pixels), indices and timestamps
    equal to sequential decoding; a clip that fails fails the same way."""
    for path in [long_gop_clip, *_clips(videos_dir)]:
        _assert_as_sequential(path, settings, _load_or_error(path, settings), monkeypatch)


def _assert_as_sequential(path, settings, fast, monkeypatch):
    """`fast` (a `load_video` result or error) equals sequential decoding's: frames (pixels), indices, timestamps;
    or the same error."""
    with monkeypatch.context() as m:
        _sequential(m)
        slow = _load_or_error(path, settings)
    if isinstance(slow, Exception):
        assert type(fast) is type(slow) and str(fast) == str(slow), path.name
        return
    assert not isinstance(fast, Exception), (path.name, fast)
    (frames, meta), (ref_frames, ref_meta) = fast, slow
    assert meta.frames_indices == ref_meta.frames_indices and meta.timestamps == ref_meta.timestamps, path.name
    assert frames.shape == ref_frames.shape and np.array_equal(frames, ref_frames), path.name


def test_long_gop_clip_frames_are_the_encoded_ones(long_gop_clip):
    """Independent of our sequential path: the frame index written into each sampled frame is the sampled index."""
    frames, meta = P.load_video(long_gop_clip, fps=None, max_frames=64)
    bits = (frames[:, 2:6, 2 : 12 * 4 : 4, 0] > 127).all(axis=1)  # [T, 12]
    assert (bits.astype(np.int64) << np.arange(12)).sum(axis=1).tolist() == meta.frames_indices


def test_sparse_samples_decode_only_what_they_need(long_gop_clip, monkeypatch):
    """64 frames from 3,840 with a keyframe every 50: each sampled frame needs at most the 49 frames before it
    since its keyframe, and unreferenced B-frames are skipped, so well under half the clip is decoded (sequential
    decoding, before this change, decoded all 3,840: the last sampled frame is the last frame)."""
    counts = _decoded_counter(monkeypatch)
    frames, meta = P.load_video(long_gop_clip, fps=None, max_frames=64)
    assert len(meta.frames_indices) == 64 and meta.frames_indices[-1] == LONG_FRAMES - 1
    assert len(counts) == 1
    assert counts[0] < LONG_FRAMES // 2, f"decoded {counts[0]} of {LONG_FRAMES} frames for 64 sampled"


def test_split_spans_cuts_only_where_a_seek_happens_and_balances_work():
    """`split_spans`: spans start only where the keyframe before a wanted frame lies past the previous wanted
    frame (no frame decoded twice), keep the order, and share the frames to decode about equally."""
    all_pts = list(range(100))
    keyframes = list(range(0, 100, 10))
    order = [5, 25, 27, 45, 65, 85, 88]
    for count in (2, 3, 4):
        spans = F.split_spans(order, keyframes, all_pts, count)
        assert [p for span in spans for p in span] == order and 1 < len(spans) <= count
        for before, span in zip(spans, spans[1:]):
            assert span[0] // 10 * 10 > before[-1]  # its keyframe lies past the previous span's last frame
    assert F.split_spans(order, keyframes, all_pts, 2) == [[5, 25, 27, 45], [65, 85, 88]]  # 21 vs 16 frames
    assert F.split_spans(order, keyframes, all_pts, 1) == [order]
    assert F.split_spans([21, 23, 28], keyframes, all_pts, 4) == [[21, 23, 28]]  # one keyframe interval: no cut


def _span_threads_used(monkeypatch, count: int) -> list[str]:
    """Let seeking passes use `count` span threads; returns the names of the threads that decoded a span."""
    import threading

    monkeypatch.setattr(F, "_span_threads", lambda: count)
    names: list[str] = []
    original = F._decode_span

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "_decode_span", recording)
    return names


@pytest.mark.parametrize("settings", SETTINGS[1:5] + SETTINGS[6:], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_spans_on_their_own_threads_give_the_sequential_frames(videos_dir, long_gop_clip, monkeypatch, settings):
    """Far-apart spans decoded by three threads, each on its own container: the long-GOP clip is split (more than
    one thread decodes), and every clip's frames, indices and timestamps equal sequential decoding's."""
    for path in [long_gop_clip, *_clips(videos_dir)]:
        with monkeypatch.context() as m:
            names = _span_threads_used(m, 3)
            fast = _load_or_error(path, settings)
        if path == long_gop_clip:
            assert len(set(names)) > 1, names
        _assert_as_sequential(path, settings, fast, monkeypatch)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("where", ["calling thread", "span thread"])
def test_an_error_in_one_span_stops_every_thread(long_gop_clip, monkeypatch, error, where):
    """An error or Ctrl-C while one span converts a frame (in the calling thread's span or another's) is raised by
    `load_video` once every decoding and resizing thread has stopped; the next call works."""
    import threading

    before = set(threading.enumerate())
    names = _span_threads_used(monkeypatch, 3)
    original = F._orient

    def failing(*args):
        thread = threading.current_thread()
        if thread is (threading.main_thread() if where == "calling thread" else thread_named("internvideo3-decode-2")):
            raise error("boom")
        return original(*args)

    def thread_named(name):
        return next((t for t in threading.enumerate() if t.name == name), None)

    monkeypatch.setattr(F, "_orient", failing)
    with pytest.raises(error):
        P.load_video(long_gop_clip, fps=None, max_frames=64)
    assert len(set(names)) == 3
    alive = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not alive, f"threads left running: {alive}"
    monkeypatch.setattr(F, "_orient", original)
    frames, meta = P.load_video(long_gop_clip, fps=None, max_frames=64)
    assert frames.shape[0] == 64
