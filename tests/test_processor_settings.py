"""The processor's Qwen3-VL / qwen-vl-utils knobs (issue 23, item 10): `min_pixels`/`max_pixels` on images, the
merge order defaults < processor < call < item, sampling of in-memory frames given with metadata, and a bound given
alone beating the default one. Real tokenizer, real clips."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from processing_internvideo3 import InternVideo3Processor, VideoMetadata, load_video, smart_resize
from vision_settings_internvideo3 import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS
from tests.conftest import DEMO_VIDEO, TOKENIZER_DIR

IMAGE_PROMPT = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PROMPT = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def processor(tokenizer) -> InternVideo3Processor:
    return InternVideo3Processor(tokenizer=tokenizer)


def image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def image_grid(processor, picture, **kwargs) -> tuple[int, int]:
    """(resized height, resized width) in pixels of one image processed with `kwargs`."""
    grid = processor(text=IMAGE_PROMPT, images=[picture], **kwargs)["image_grid_thw"][0].tolist()
    return grid[1] * processor.patch_size, grid[2] * processor.patch_size


def frame_size(grid, processor) -> tuple[int, int]:
    return int(grid[1]) * processor.patch_size, int(grid[2]) * processor.patch_size


def chat(*items, question="What is it?") -> list[dict]:
    return [{"role": "user", "content": [*items, {"type": "text", "text": question}]}]


# ---------------------------------------------------------------------------------------------------------------
# (a) min_pixels / max_pixels reach images, at construction and per call (transformers' Qwen2-VL/Qwen3-VL rule)
# ---------------------------------------------------------------------------------------------------------------
def test_min_and_max_pixels_of_a_call_resize_images(processor):
    large, small = image(512, 768), image(64, 96)
    assert image_grid(processor, large) == (512, 768)  # within the default image bounds: kept
    assert image_grid(processor, large, max_pixels=131072) == smart_resize(512, 768, 32, IMAGE_MIN_PIXELS, 131072)
    assert image_grid(processor, small, min_pixels=131072) == smart_resize(64, 96, 32, 131072, IMAGE_MAX_PIXELS)
    # the image-only names are more specific than the shared ones given in the same call
    both = image_grid(processor, large, max_pixels=131072, image_max_pixels=262144)
    assert both == smart_resize(512, 768, 32, IMAGE_MIN_PIXELS, 262144)


def test_min_and_max_pixels_at_construction_resize_images_and_survive_a_save(tokenizer, tmp_path):
    large, small = image(512, 768), image(64, 96)
    built = InternVideo3Processor(tokenizer=tokenizer, max_pixels=131072, min_pixels=16384)
    assert image_grid(built, large) == smart_resize(512, 768, 32, 16384, 131072)
    assert image_grid(built, small) == smart_resize(64, 96, 32, 16384, 131072)
    assert (built.min_pixels, built.max_pixels) == (16384, 131072)  # the video per-frame budget too
    built.save_pretrained(tmp_path)
    loaded = InternVideo3Processor.from_pretrained(tmp_path)
    assert image_grid(loaded, large) == image_grid(built, large)
    assert image_grid(loaded, small) == image_grid(built, small)
    # nothing given: the Qwen3-VL release's image bounds, not the video per-frame ones
    default = InternVideo3Processor(tokenizer=tokenizer)
    assert (default.image_min_pixels, default.image_max_pixels) == (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    assert (default.min_pixels, default.max_pixels) == (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)


# ---------------------------------------------------------------------------------------------------------------
# (b) one merge order: defaults < processor < call < item
# ---------------------------------------------------------------------------------------------------------------
def test_an_image_item_setting_beats_the_call(processor):
    large = image(512, 768)
    messages = chat({"type": "image", "image": large, "max_pixels": 131072})
    out = processor.apply_chat_template(messages, tokenize=True, image_max_pixels=262144)
    assert frame_size(out["image_grid_thw"][0], processor) == smart_resize(512, 768, 32, IMAGE_MIN_PIXELS, 131072)
    out = processor.apply_chat_template(messages, tokenize=True, image_min_pixels=8 * 131072)
    # the call's min yields to the item's max: it is the less specific of the two
    assert frame_size(out["image_grid_thw"][0], processor) == smart_resize(512, 768, 32, 131072, 131072)


def test_a_video_item_budget_beats_the_call(processor):
    """An item's per-frame `max_pixels` beats a call's `size` (which selects the "total" budget) and vice versa."""
    item = {"type": "video", "video": str(DEMO_VIDEO), "fps": 2, "max_frames": 4}
    per_frame = processor.apply_chat_template(chat({**item, "max_pixels": 128 * 32 * 32}), tokenize=True)
    volume = {"shortest_edge": 4096, "longest_edge": 4 * 480 * 640}
    out = processor.apply_chat_template(chat({**item, "max_pixels": 128 * 32 * 32}), tokenize=True, size=volume)
    assert out["video_grid_thw"].tolist() == per_frame["video_grid_thw"].tolist()
    total = processor.apply_chat_template(chat({**item, "size": volume}), tokenize=True)
    out = processor.apply_chat_template(chat({**item, "size": volume}), tokenize=True, max_pixels=128 * 32 * 32)
    assert out["video_grid_thw"].tolist() == total["video_grid_thw"].tolist()
    assert total["video_grid_thw"].tolist() != per_frame["video_grid_thw"].tolist()


# ---------------------------------------------------------------------------------------------------------------
# (c) in-memory frames with metadata are sampled at the requested fps unless said to be sampled already
# ---------------------------------------------------------------------------------------------------------------
def test_frames_with_metadata_are_sampled_at_the_requested_fps(processor):
    """Every frame of the 5 fps demo clip, given with its frame rate, is sampled at fps=2 as the file is (transformers'
    `Qwen3VLVideoProcessor`, `do_sample_frames=True` by default): the same tokens as the file. Frames the caller
    says are sampled (`do_sample_frames=False`, qwen-vl-utils' video_kwargs) are used as given."""
    frames, meta = load_video(DEMO_VIDEO, fps=None)  # all 40 frames
    assert frames.shape[0] == meta.total_num_frames == 40 and meta.fps == 5.0
    from_file = processor(text=VIDEO_PROMPT, videos=[str(DEMO_VIDEO)])
    assert int(from_file["video_grid_thw"][0, 0]) == 8  # 8 s at 2 fps: 16 frames
    metadata = (
        {"fps": 5.0, "total_num_frames": 40},
        VideoMetadata(total_num_frames=40, fps=5.0, width=640, height=480, frames_indices=list(range(40))),
    )
    for given in metadata:
        out = processor(text=VIDEO_PROMPT, videos=[frames], video_metadata=[given])
        assert out["video_grid_thw"].tolist() == from_file["video_grid_thw"].tolist()
        assert out["input_ids"].tolist() == from_file["input_ids"].tolist()
        as_given = processor(text=VIDEO_PROMPT, videos=[frames], video_metadata=[given], do_sample_frames=False)
        assert int(as_given["video_grid_thw"][0, 0]) == 20


# ---------------------------------------------------------------------------------------------------------------
# (d) a bound given alone beats the default one; both given and in conflict is an error
# ---------------------------------------------------------------------------------------------------------------
def test_max_pixels_alone_below_the_default_min_pixels_is_honoured(processor):
    """qwen-vl-utils' fetch_video: max_pixels = min(item max_pixels, max(min(768·32², total / T · 2), 1.05 · min)),
    then smart_resize(h, w, 32, min_pixels=128·32², max_pixels) (transformers' rule checks the upper bound first)."""
    message = chat({"type": "video", "video": str(DEMO_VIDEO), "fps": 2, "max_frames": 4, "max_pixels": 32768})
    out = processor.apply_chat_template(message, tokenize=True)
    expected = smart_resize(480, 640, 32, VIDEO_MIN_PIXELS, 32768)
    assert frame_size(out["video_grid_thw"][0], processor) == expected
    assert expected[0] * expected[1] <= 32768
    message = chat({"type": "video", "video": str(DEMO_VIDEO), "fps": 2, "max_frames": 4, "min_pixels": 10**6})
    out = processor.apply_chat_template(message, tokenize=True)
    assert frame_size(out["video_grid_thw"][0], processor) == smart_resize(480, 640, 32, 10**6, int(1.05 * 10**6))
    # the same at call level, for videos and images
    call = processor(text=VIDEO_PROMPT, videos=[str(DEMO_VIDEO)], fps=2, max_frames=4, max_pixels=32768)
    assert frame_size(call["video_grid_thw"][0], processor) == expected
    assert image_grid(processor, image(512, 768), max_pixels=32768) == smart_resize(512, 768, 32, 32768, 32768)
    big = image_grid(processor, image(64, 96), image_min_pixels=20_000_000)
    assert big == smart_resize(64, 96, 32, 20_000_000, 20_000_000)


def test_both_bounds_given_in_conflict_are_an_error(processor):
    with pytest.raises(ValueError, match=r"min_pixels \(65536\) must be <= max_pixels \(32768\)"):
        processor(text=VIDEO_PROMPT, videos=[str(DEMO_VIDEO)], min_pixels=65536, max_pixels=32768)
    message = chat({"type": "video", "video": str(DEMO_VIDEO), "min_pixels": 65536, "max_pixels": 32768})
    with pytest.raises(ValueError, match=r"min_pixels \(65536\) must be <= max_pixels \(32768\)"):
        processor.apply_chat_template(message, tokenize=True)
    with pytest.raises(ValueError, match=r"image_min_pixels \(65536\) must be <= image_max_pixels \(32768\)"):
        processor(text=IMAGE_PROMPT, images=[image(64, 64)], image_min_pixels=65536, image_max_pixels=32768)
    with pytest.raises(ValueError, match=r"min_pixels \(65536\) must be <= max_pixels \(32768\)"):
        InternVideo3Processor(tokenizer=processor.tokenizer, min_pixels=65536, max_pixels=32768)
