"""Processor output fingerprint (issue 24, item 5): what users see stays bit-identical across the processor split.

For every clip in tests/data/videos and a few real images (frames of those clips), the processor's input_ids,
pixel_values(_videos), image/video_grid_thw and prompt text (which carries the timestamps) are hashed; for bad inputs
the exception class and message, and every warning's class and message, are recorded. The saved fingerprint
(tests/fixtures/processor_fingerprint.json) was made with the code before the split; a deliberate change of
user-visible output updates only the affected cases (say so in the commit). Regenerate with
INTERNVIDEO3_WRITE_FINGERPRINT=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from processing_internvideo3 import InternVideo3Processor
from tests.conftest import REPO_ROOT, TEST_VIDEOS_DIR, TOKENIZER_DIR, remux_faststart

FINGERPRINT = Path(__file__).parent / "fixtures" / "processor_fingerprint.json"
BUDGET = {"fps": 2, "max_frames": 8, "max_pixels": 256 * 32 * 32}
CLIPS = ["av1_640x360.mkv", "hevc_128x128.mp4", "pole_vault.mp4", "snow_dog.mp4", "unordered_timestamps.mov"]


def _digest(value) -> str:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        head = f"{t.dtype}{tuple(t.shape)}".encode()
        return hashlib.sha256(head + t.view(torch.uint8).numpy().tobytes() if t.numel() else head).hexdigest()[:24]
    return hashlib.sha256(str(value).encode()).hexdigest()[:24]


def _clean(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<tmp>").replace(str(TEST_VIDEOS_DIR), "<videos>").replace(str(REPO_ROOT), "<root>")


def _frame(clip: str, index: int = 0) -> Image.Image:
    with av.open(str(TEST_VIDEOS_DIR / clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_image()
    raise AssertionError(clip)


def _run(call, tmp: Path) -> dict:
    """Outputs of call() as digests, or the error; with every warning raised on the way."""
    record: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = call()
        except Exception as error:  # noqa: BLE001 - the error text is what is fingerprinted
            record["error"] = f"{type(error).__name__}: {_clean(str(error), tmp)}"
        else:
            for key in sorted(out.keys()):
                value = out[key]
                record[key] = _digest(value) if isinstance(value, torch.Tensor) else _digest(json.dumps(value, default=str))
                if isinstance(value, torch.Tensor) and key.endswith("grid_thw"):
                    record[key + "_values"] = value.tolist()
    record["warnings"] = [f"{w.category.__name__}: {_clean(str(w.message), tmp)}" for w in caught]
    return record


def _cases(processor: InternVideo3Processor, tmp: Path) -> dict:
    def chat(content, **kwargs):
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": "Describe."}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)

        def call():
            out = processor.apply_chat_template(
                messages, tokenize=True, return_dict=True, add_generation_prompt=True, **kwargs
            )
            out = dict(out)
            out["prompt_text"] = text
            out["decoded"] = processor.decode(out["input_ids"][0])
            return out

        return call

    def video(path, **item):
        return {"type": "video", "video": str(path), **item}

    cases: dict = {}
    for clip in CLIPS:
        cases[f"video/{clip}/budget"] = chat([video(TEST_VIDEOS_DIR / clip)], **BUDGET)
    for clip in ["av1_640x360.mkv", "hevc_128x128.mp4", "snow_dog.mp4", "unordered_timestamps.mov"]:
        cases[f"video/{clip}/defaults"] = chat([video(TEST_VIDEOS_DIR / clip)])
    cases["video/snow_dog.mp4/item_window"] = chat(
        [video(TEST_VIDEOS_DIR / "snow_dog.mp4", video_start=1.0, video_end=5.0, nframes=6, max_pixels=128 * 32 * 32)]
    )
    cases["video/pole_vault.mp4/item_fps"] = chat([video(TEST_VIDEOS_DIR / "pole_vault.mp4", fps=0.1, max_pixels=64 * 32 * 32)])
    cases["video/two_clips"] = chat([video(TEST_VIDEOS_DIR / "hevc_128x128.mp4"), video(TEST_VIDEOS_DIR / "av1_640x360.mkv")], **BUDGET)

    snow, vault, tiny = _frame("snow_dog.mp4", 3), _frame("pole_vault.mp4", 100), _frame("unordered_timestamps.mov")
    for name, image in [("snow_dog_f3", snow), ("pole_vault_f100", vault), ("unordered_f0", tiny)]:
        cases[f"image/{name}/defaults"] = chat([{"type": "image", "image": image}])
    cases["image/snow_dog_f3/item_max_pixels"] = chat([{"type": "image", "image": snow, "max_pixels": 64 * 32 * 32}])
    cases["image/direct_call"] = lambda: processor(
        text=["<|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|>"],
        images=[snow, tiny], return_tensors="pt",
    )
    cases["mixed/image_and_video"] = chat(
        [{"type": "image", "image": vault}, video(TEST_VIDEOS_DIR / "hevc_128x128.mp4")], **BUDGET
    )

    # Bad inputs: the text of the error (and of any warning) is part of what users see.
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "notes.mp4").write_text("not a video\n")
    # index in front, so a cut file opens and warns (TruncatedVideoWarning)
    faststart = remux_faststart(TEST_VIDEOS_DIR / "snow_dog.mp4", tmp / "snow_dog_faststart.mp4")
    data = faststart.read_bytes()
    (tmp / "partial_download.mp4").write_bytes(data[: len(data) // 3])
    cases["warn/partial_download"] = chat([video(tmp / "partial_download.mp4")], **BUDGET)
    cases["bad/corrupted"] = chat([video(TEST_VIDEOS_DIR / "corrupted.mp4")], **BUDGET)
    cases["bad/missing"] = chat([video(tmp / "missing.mp4")], **BUDGET)
    cases["bad/empty"] = chat([video(tmp / "empty.mp4")], **BUDGET)
    cases["bad/text_file"] = chat([video(tmp / "notes.mp4")], **BUDGET)
    cases["bad/negative_fps"] = chat([video(TEST_VIDEOS_DIR / "snow_dog.mp4")], fps=-1)
    cases["bad/window_after_end"] = chat([video(TEST_VIDEOS_DIR / "snow_dog.mp4", video_start=50.0)], **BUDGET)
    cases["bad/placeholders_mismatch"] = lambda: processor(
        text=["<|vision_start|><|video_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"],
        videos=[str(TEST_VIDEOS_DIR / "hevc_128x128.mp4")], return_tensors="pt",
    )
    return cases


@pytest.fixture(scope="module")
def processor() -> InternVideo3Processor:
    return InternVideo3Processor(tokenizer=AutoTokenizer.from_pretrained(TOKENIZER_DIR))


def test_processor_output_matches_saved_fingerprint(processor, tmp_path):
    got = {name: _run(call, tmp_path) for name, call in _cases(processor, tmp_path).items()}
    if os.environ.get("INTERNVIDEO3_WRITE_FINGERPRINT"):
        FINGERPRINT.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    saved = json.loads(FINGERPRINT.read_text())
    assert sorted(got) == sorted(saved)
    changed = [name for name in saved if got[name] != saved[name]]
    assert not changed, {name: (saved[name], got[name]) for name in changed}
