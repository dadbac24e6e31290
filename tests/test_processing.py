"""Processor on real clips (SPEC §7): PyAV decoding edge cases, budgets, prompt layout, chat template.

Clips come from tests/data/videos (or $INTERNVIDEO3_TEST_VIDEOS). Files with rotation metadata and several video
streams do not exist among them, so they are written here with PyAV from real decoded frames: the rotated one is a
real MP4 whose track header carries a 90° display matrix, exactly what phones write.
"""

from __future__ import annotations

import json
import queue
import re
import struct

import av
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from processing_internvideo3 import (
    InternVideo3Processor,
    VideoLoadError,
    load_video,
    resize_frames,
    smart_resize,
)
from tests.conftest import DEMO_VIDEO, TOKENIZER_DIR

STAMP = re.compile(r"<(\d+\.\d) seconds><\|vision_start\|>((?:<\|video_pad\|>)+)<\|vision_end\|>")


@pytest.fixture(scope="module")
def processor() -> InternVideo3Processor:
    return InternVideo3Processor(tokenizer=AutoTokenizer.from_pretrained(TOKENIZER_DIR))


def video_message(path, question="Describe the video.", **budget) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": str(path), **budget}, {"type": "text", "text": question}]}]


def all_frames_in_presentation_order(path) -> tuple[np.ndarray, list[float]]:
    """Independent decode: every frame, sorted by its pts (what a player shows), with times in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sorted(((f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(stream)), key=lambda x: x[0])
        base = stream.time_base
    first = frames[0][0]
    return np.stack([f for _, f in frames]), [float((p - first) * base) for p, _ in frames]


def write_video(path, streams: list[dict], frames: np.ndarray, rate: int = 5) -> None:
    """Mux `frames` [T, H, W, 3] uint8 into one MPEG-4 stream per spec ({"size": (h, w), "default": bool})."""
    with av.open(str(path), "w") as container:
        out = []
        for spec in streams:
            stream = container.add_stream("mpeg4", rate=rate)
            stream.height, stream.width = spec["size"]
            stream.pix_fmt = "yuv420p"
            stream.disposition = av.stream.Disposition.default if spec["default"] else av.stream.Disposition(0)
            out.append(stream)
        for frame in frames:
            for stream in out:
                image = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(stream.width, stream.height)
                for packet in stream.encode(image):
                    container.mux(packet)
        for stream in out:
            for packet in stream.encode():
                container.mux(packet)


def set_display_matrix(path, matrix: list[int]) -> None:
    """Overwrite the 3×3 display matrix of the first `tkhd` box (ISO/IEC 14496-12 §8.3.2) in place."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    # version/flags, times, track id, reserved, duration, reserved[2], layer, group, volume, reserved
    offset = at + 8 + (8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4) + 8 + 8
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------------
# Prompt layout and token counts
# ---------------------------------------------------------------------------------------------------------------
def test_demo_clip_tokens_match_grid_and_timestamps_increase(processor):
    out = processor.apply_chat_template(
        video_message(DEMO_VIDEO), tokenize=True, return_dict=True, add_generation_prompt=True, fps=2, max_frames=8,
        max_pixels=256 * 32 * 32,
    )  # fmt: skip
    t, h, w = out["video_grid_thw"][0].tolist()
    assert out["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 16 * 16)
    text = processor.decode(out["input_ids"][0])
    groups = STAMP.findall(text)
    assert len(groups) == t == 4  # 8 s at 2 fps capped to 8 frames -> 4 temporal patches
    assert all(len(pads) // len("<|video_pad|>") == h * w // 4 for _, pads in groups)
    stamps = [float(s) for s, _ in groups]
    assert stamps == sorted(stamps) and len(set(stamps)) == t
    ids = out["input_ids"][0]
    assert int((ids == processor.video_token_id).sum()) == t * h * w // 4
    # the wrapper of each group: one vision_start and one vision_end, and nothing outside the groups
    assert int((ids == processor.vision_start_token_id).sum()) == t
    assert int((ids == processor.vision_end_token_id).sum()) == t
    assert out["attention_mask"].shape == out["input_ids"].shape


def test_per_frame_budget_follows_qwen_vl_utils_rule(processor):
    """qwen-vl-utils fetch_video: max_pixels per frame = max(min(max_pixels, total_pixels / T · 2), 1.05 · min)."""
    frames, meta = processor.load_video(DEMO_VIDEO, fps=2, max_frames=16, total_pixels=16 * 200 * 32 * 32 // 2)
    n = frames.shape[0]
    assert n == 16 and meta.num_sampled_frames == 16
    cap = max(min(768 * 1024, 16 * 200 * 32 * 32 // 2 / n * 2), int(128 * 1024 * 1.05))
    assert frames.shape[1:3] == smart_resize(480, 640, 32, 128 * 1024, cap)
    assert frames.shape[1] * frames.shape[2] <= cap


def test_total_budget_uses_size_and_stays_within_it(processor):
    out = processor(
        text="<|vision_start|><|video_pad|><|vision_end|>", videos=[str(DEMO_VIDEO)], fps=2, max_frames=8,
        size={"shortest_edge": 4096, "longest_edge": 786_432},
    )  # fmt: skip
    t, h, w = out["video_grid_thw"][0].tolist()
    assert 2 * t * (h * 16) * (w * 16) <= 786_432 and (h * 16) % 32 == 0 and (w * 16) % 32 == 0


def test_batch_of_two_videos_is_left_padded(processor):
    conversations = [video_message(DEMO_VIDEO, max_frames=4, max_pixels=128 * 1024), video_message(DEMO_VIDEO, max_frames=8, max_pixels=128 * 1024)]
    out = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, add_generation_prompt=True)
    grids = out["video_grid_thw"].tolist()
    assert [g[0] for g in grids] == [2, 4]
    lengths = out["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] == out["input_ids"].shape[1]
    assert out["attention_mask"][0, : lengths[1] - lengths[0]].sum() == 0  # padding sits on the left
    assert out["pixel_values_videos"].shape[0] == sum(t * h * w for t, h, w in grids)


def test_placeholder_count_mismatch_names_both_numbers(processor):
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"2 video placeholders but 1 videos"):
        processor(text="<|video_pad|> and <|video_pad|>", videos=[frames])
    with pytest.raises(ValueError, match=r"has \d+ video placeholder tokens but the videos give \d+"):
        processor(text="<|video_pad|>", videos=[frames], truncation=True, max_length=8)


# ---------------------------------------------------------------------------------------------------------------
# Decoding edge cases on real files
# ---------------------------------------------------------------------------------------------------------------
def test_corrupted_missing_and_empty_files_name_the_file(videos_dir, tmp_path):
    corrupted = videos_dir / "corrupted.mp4"
    with pytest.raises(VideoLoadError, match=re.escape(str(corrupted))):
        load_video(corrupted)
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_video(missing)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoLoadError, match="empty"):
        load_video(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoLoadError, match=re.escape(str(text))):
        load_video(text)


@pytest.mark.parametrize("name,size", [("hevc_128x128.mp4", (128, 128)), ("av1_640x360.mkv", (360, 640))])
def test_hevc_and_av1_decode_to_the_same_pixels_as_a_plain_pyav_decode(videos_dir, name, size):
    frames, meta = load_video(videos_dir / name, fps=None, max_frames=1000)
    reference, times = all_frames_in_presentation_order(videos_dir / name)
    assert frames.shape[1:3] == size and (meta.height, meta.width) == size
    n = len(reference)
    assert meta.num_sampled_frames == n and frames.shape[0] == n + n % 2
    np.testing.assert_array_equal(frames[:n], reference)
    np.testing.assert_allclose(meta.timestamps[:n], times, atol=1e-9)
    assert float(frames.std()) > 1.0  # a real picture, not a blank frame


def test_out_of_order_timestamps_give_presentation_order(videos_dir):
    path = videos_dir / "unordered_timestamps.mov"
    with av.open(str(path)) as container:
        stored = [p.pts for p in container.demux(video=0) if p.size]
    assert stored != sorted(stored)  # the file really stores frames out of presentation order
    frames, meta = load_video(path, fps=None)
    reference, times = all_frames_in_presentation_order(path)
    n = len(reference)
    np.testing.assert_array_equal(frames[:n], reference)
    assert np.all(np.diff(meta.timestamps[:n]) > 0)
    np.testing.assert_allclose(meta.timestamps[:n], times, atol=1e-9)


def test_rotation_metadata_turns_a_landscape_recording_into_portrait(videos_dir, tmp_path):
    source, _ = load_video(videos_dir / "snow_dog.mp4", nframes=4)
    landscape = source[:, ::4, ::4].copy()  # 120 × 160
    landscape[:, :30, :40] = (255, 0, 0)  # a red marker in the stored top-left corner
    path = tmp_path / "phone.mp4"
    write_video(path, [{"size": (120, 160), "default": True}], landscape)
    set_display_matrix(path, [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30])  # "rotate 90° clockwise to display"

    frames, meta = load_video(path, fps=None)
    assert frames.shape[1:3] == (160, 120) and (meta.height, meta.width) == (160, 120)
    assert meta.rotation in (-90, 270)
    # clockwise rotation moves the stored top-left corner to the displayed top-right corner
    top_right, top_left = frames[0, :20, -20:].mean(axis=(0, 1)), frames[0, :20, :20].mean(axis=(0, 1))
    assert top_right[0] > 200 and top_right[1] < 60 and not (top_left[0] > 200 and top_left[1] < 60)


def test_several_video_streams_use_the_default_stream(videos_dir, tmp_path):
    frames, _ = load_video(videos_dir / "snow_dog.mp4", nframes=4)
    path = tmp_path / "two_streams.mp4"
    # the non-default stream comes first and is larger, so neither "first" nor "largest" would pick the default
    write_video(path, [{"size": (96, 128), "default": False}, {"size": (48, 64), "default": True}], frames)
    out, meta = load_video(path, fps=None)
    assert out.shape[1:3] == (48, 64) and (meta.height, meta.width) == (48, 64)


# ---------------------------------------------------------------------------------------------------------------
# Inputs already decoded elsewhere
# ---------------------------------------------------------------------------------------------------------------
def test_qwen_vl_utils_style_inputs_equal_the_file_path(processor):
    """`process_vision_info` returns float [T, C, H, W] frames already resized, plus `video_kwargs={"fps": [...]}`
    (or per-video metadata dicts with `fps` and `frames_indices`); those inputs give the same features as a path."""
    budget = dict(fps=2, max_frames=8, max_pixels=128 * 1024)
    frames, meta = processor.load_video(DEMO_VIDEO, **budget)
    prompt = processor.apply_chat_template(video_message(DEMO_VIDEO), add_generation_prompt=True)
    from_path = processor(text=prompt, videos=[str(DEMO_VIDEO)], **budget)

    qwen_frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    qwen_meta = {"fps": meta.fps, "frames_indices": meta.frames_indices, "total_num_frames": meta.total_num_frames}
    with_meta = processor(text=prompt, videos=[qwen_frames], video_metadata=[qwen_meta], **budget)
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw"):
        torch.testing.assert_close(with_meta[key], from_path[key], rtol=0, atol=1e-6)

    # without metadata (qwen-vl-utils < 0.0.14): timestamps come from the sampling fps in video_kwargs
    with_fps = processor(text=prompt, videos=[qwen_frames], fps=[2.0], max_frames=8)
    torch.testing.assert_close(with_fps["pixel_values_videos"], from_path["pixel_values_videos"], rtol=0, atol=1e-6)
    stamps = [s for s, _ in STAMP.findall(processor.decode(with_fps["input_ids"][0]))]
    # frames at i/2 s, each group at the mean of its 2 frames, printed with "{:.1f}" as Qwen3-VL does
    assert stamps == [f"{t:.1f}" for t in (0.25, 1.25, 2.25, 3.25)]


def test_qwen_vl_utils_metadata_outputs_give_the_tokens_of_the_file(processor):
    """The Qwen3-VL model card's call: `images, videos, video_kwargs = process_vision_info(messages,
    image_patch_size=16, return_video_kwargs=True, return_video_metadata=True)` (qwen-vl-utils 0.0.14), `videos,
    video_metadata = zip(*videos)`, `processor(text, videos=..., video_metadata=..., do_resize=False,
    **video_kwargs)`. Its outputs are built here as fetch_video makes them (qwen-vl-utils needs torchvision): frames
    idx = round(linspace(0, total - 1, nframes)) decoded (our PyAV decode; torchcodec gives the same pixels, see
    test_fidelity.py), resized to its per-frame budget by torchvision's v1 tensor `resize` (float32 bicubic
    antialiased `interpolate`, clamped, rounded to uint8), `.float()`, metadata {fps, frames_indices,
    total_num_frames, video_backend}, video_kwargs {"do_sample_frames": False} (checked against qwen-vl-utils 0.0.14
    itself in its own environment: identical frames). Tokens and timestamps equal passing the file; pixels differ
    by at most two uint8 levels, where torchvision's float resize rounds differently from the uint8 kernel that
    transformers' video processor and ours use."""
    max_pixels = 200 * 32 * 32  # an item budget below the 640x480 frames, so both paths resize
    message = video_message(DEMO_VIDEO, max_pixels=max_pixels)
    prompt = processor.apply_chat_template(message, add_generation_prompt=True)
    from_file = processor(text=prompt, videos=[str(DEMO_VIDEO)], max_pixels=max_pixels)

    frames, meta = load_video(DEMO_VIDEO, fps=2)  # native size, the frames qwen-vl-utils asks torchcodec for
    total, fps = meta.total_num_frames, meta.fps
    nframes = min(max(total / fps * 2, 4), min(768, total)) // 2 * 2  # smart_nframes (fps 2), even
    idx = torch.linspace(0, total - 1, int(nframes)).round().long().tolist()
    assert meta.frames_indices == idx
    per_frame = max(min(768 * 32 * 32, 128000 * 32 * 32 * 0.9 / len(idx) * 2), int(128 * 32 * 32 * 1.05))
    size = smart_resize(frames.shape[1], frames.shape[2], 32, 128 * 32 * 32, min(max_pixels, per_frame))
    assert size != frames.shape[1:3]
    video = resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size).clamp(0, 255).round()
    for frames_indices, backend in ((idx, "torchcodec"), (torch.tensor(idx), "torchvision")):
        videos = [(video, {"fps": fps, "frames_indices": frames_indices, "total_num_frames": total, "video_backend": backend})]
        video_kwargs = {"do_sample_frames": False}
        videos, video_metadata = zip(*videos)
        out = processor(
            text=prompt, videos=list(videos), video_metadata=list(video_metadata), do_resize=False, return_tensors="pt",
            **video_kwargs,
        )  # fmt: skip
        for key in ("input_ids", "attention_mask", "video_grid_thw"):
            assert torch.equal(out[key], from_file[key]), key
        difference = (out["pixel_values_videos"] - from_file["pixel_values_videos"]).abs()
        assert float(difference.max()) <= 2 / 127.5 + 1e-6 and float((difference > 0).float().mean()) < 0.2
    stamps = [s for s, _ in STAMP.findall(processor.decode(out["input_ids"][0]))]
    times = [i / fps for i in idx]
    assert stamps == [f"{(times[g] + times[g + 1]) / 2:.1f}" for g in range(0, len(times), 2)]


def test_qwen_vl_utils_process_vision_info_when_installed(processor, tmp_path):
    vision = pytest.importorskip("qwen_vl_utils", exc_type=ImportError)  # needs torchvision, not in the test extra
    frames, _ = load_video(DEMO_VIDEO, nframes=4)
    paths = []
    for i, frame in enumerate(frames):
        from PIL import Image

        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(frame).save(paths[-1])
    messages = [{"role": "user", "content": [{"type": "video", "video": paths, "sample_fps": 2}, {"type": "text", "text": "?"}]}]
    _, videos, kwargs = vision.process_vision_info(messages, return_video_kwargs=True)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = processor(text=prompt, videos=videos, **kwargs)
    assert out["pixel_values_videos"].shape[0] == int(out["video_grid_thw"].prod())


# ---------------------------------------------------------------------------------------------------------------
# Chat template
# ---------------------------------------------------------------------------------------------------------------
def test_text_chat_template_equals_qwen3_for_text_tools_and_thinking(processor):
    """For text-only conversations the template is the Qwen3 tokenizer's own (the model is a Qwen3 decoder)."""
    tokenizer = processor.tokenizer
    tools = [{"type": "function", "function": {"name": "seek", "description": "Jump to a time.", "parameters": {"type": "object", "properties": {"t": {"type": "number"}}}}}]
    call = {"type": "function", "function": {"name": "seek", "arguments": {"t": 3.5}}}
    conversations = [
        [{"role": "system", "content": "You watch videos."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello"}, {"role": "user", "content": "Again"}],
        [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": json.dumps({"frame": 7})}],
    ]  # fmt: skip
    for messages in conversations:
        for thinking in (True, False):
            ours = processor.apply_chat_template(messages, tools=tools, add_generation_prompt=True, enable_thinking=thinking)
            qwen3 = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, enable_thinking=thinking, tokenize=False)
            if thinking:  # Qwen3's template lets the model open <think> itself; ours opens it when asked to think
                assert ours == qwen3 + "<think>\n"
            else:
                assert ours == qwen3
            assert processor.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False) == tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=False)


def test_template_vision_items_and_labels(processor):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "video", "video": "a.mp4"}, {"type": "video", "video": "b.mp4"}, {"type": "text", "text": "Compare."}]},
    ]  # fmt: skip
    text = processor.apply_chat_template(messages, add_generation_prompt=True, add_vision_id=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>Video 2: <|vision_start|><|video_pad|><|vision_end|>"
        "Compare.<|im_end|>\n<|im_start|>assistant\n"
    )


class _InterruptingQueue(queue.Queue):
    """The decode pipeline's queue, raising KeyboardInterrupt (a Ctrl-C in the decoding thread) at chosen puts:
    `at` counts frame puts from 1; "end" is the final put(None)."""

    made: list = []
    plan: set = set()

    def __init__(self, maxsize=0):
        super().__init__(maxsize)
        self.frames = 0
        _InterruptingQueue.made.append(self)

    def put(self, item, block=True, timeout=None):
        if item is None and "end" in self.plan:
            self.plan.discard("end")
            raise KeyboardInterrupt
        if item is not None:
            self.frames += 1
            if self.frames in self.plan:
                self.plan.discard(self.frames)
                raise KeyboardInterrupt
        super().put(item, block, timeout)


@pytest.mark.parametrize(
    "plan, join_interrupts",
    [({3}, 0), ({3}, 1), ({3, "end"}, 1), ({"end"}, 0), ({"end"}, 2)],
    ids=["mid-decode", "mid-decode+join", "mid-decode+cleanup+join", "at-end", "at-end+join-twice"],
)
def test_interrupts_leave_no_decode_thread_alive(processor, monkeypatch, plan, join_interrupts):
    """Ctrl-C at each stage of the decode pipeline (while frames flow, at the final hand-over, and again while the
    pipeline cleans up) ends in KeyboardInterrupt with the resizing thread finished: none is left waiting for frames
    (main: a second Ctrl-C in the cleanup left it blocked forever, and the process hung at exit)."""
    import threading

    before = set(threading.enumerate())
    _InterruptingQueue.made, _InterruptingQueue.plan = [], set(plan)
    monkeypatch.setattr(queue, "Queue", _InterruptingQueue)
    real_join, joins = threading.Thread.join, [join_interrupts]

    def interrupted_join(self, timeout=None):
        if joins[0] > 0 and self not in before:
            joins[0] -= 1
            raise KeyboardInterrupt
        return real_join(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", interrupted_join)
    with pytest.raises(KeyboardInterrupt):
        processor.load_video(str(DEMO_VIDEO), fps=4.0, max_frames=16, max_pixels=64 * 64, min_pixels=32 * 32)
    monkeypatch.undo()
    alive = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    for made in _InterruptingQueue.made:  # rescue a stuck thread so a failing run still ends
        for _ in range(made.maxsize + 1):
            try:
                queue.Queue.put(made, None, block=False)
            except queue.Full:
                break
    assert not alive, f"threads left running: {alive}"
    frames, _ = processor.load_video(str(DEMO_VIDEO), fps=4.0, max_frames=16, max_pixels=64 * 64, min_pixels=32 * 32)
    assert frames.shape[0] > 3  # the next call works
