"""The processor laid out as transformers' Qwen3-VL (issue 24): an image processor, a video processor and a tokenizer
under one ProcessorMixin, each loadable by its Auto class from a saved folder with `trust_remote_code=True`, in a
fresh process (as a Hub user loads them); folders written before the split still load; settings validated once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_checkpoint import run_isolated
from transformers import AutoProcessor, AutoTokenizer

import vision_settings_internvideo3
from processing_internvideo3 import InternVideo3Processor
from tests.conftest import DEMO_VIDEO, REPO_ROOT, TOKENIZER_DIR

REMOTE_CODE = [
    "configuration_internvideo3.py", "processing_internvideo3.py", "image_processing_internvideo3.py",
    "video_processing_internvideo3.py", "video_decoding_internvideo3.py", "video_frames_internvideo3.py",
    "vision_settings_internvideo3.py",
]  # fmt: skip
BUDGET = {"fps": 2, "max_frames": 4, "max_pixels": 128 * 32 * 32}

LOAD_PARTS = r"""
import json, sys
from transformers import AutoImageProcessor, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # the top-level name needs torchvision

folder = sys.argv[1]
video = AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)
image = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "video", "video": sys.argv[2], "max_frames": 4,
                                          "max_pixels": 128 * 32 * 32}, {"type": "text", "text": "What?"}]}]
out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
video_module = sys.modules[type(processor.video_processor).__module__]
print(json.dumps({
    "video": type(video).__name__, "image": type(image).__name__, "processor": type(processor).__name__,
    "modules": sorted({type(p).__module__ for p in (video, image, processor, processor.image_processor,
                                                    processor.video_processor)}),
    "parts": [type(processor.image_processor).__name__, type(processor.video_processor).__name__],
    "same_errors": processor.VideoLoadError is video_module.VideoLoadError
    and processor.TruncatedVideoWarning is video_module.TruncatedVideoWarning,
    "fps": video.fps, "image_min_pixels": image.min_pixels,
    "grid": out["video_grid_thw"].tolist(), "tokens": int(out["input_ids"].shape[1]),
}))
"""


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _saved(tmp_path: Path, tokenizer, **settings) -> Path:
    folder = tmp_path / "processor"
    InternVideo3Processor(tokenizer=tokenizer, **settings).save_pretrained(folder)
    return folder


def test_auto_classes_load_the_processors_own_parts_in_a_fresh_process(tokenizer, tmp_path):
    folder = _saved(tmp_path, tokenizer, fps=1, image_min_pixels=32 * 32 * 32)
    assert {"chat_template.jinja", *REMOTE_CODE} <= {p.name for p in folder.iterdir()}
    result = run_isolated(LOAD_PARTS, str(folder), str(DEMO_VIDEO), cwd=tmp_path)
    assert result["video"] == "InternVideo3VideoProcessor" and result["image"] == "InternVideo3ImageProcessor"
    assert result["processor"] == "InternVideo3Processor"
    assert result["parts"] == ["InternVideo3ImageProcessor", "InternVideo3VideoProcessor"]
    assert all(m.startswith("transformers_modules.") for m in result["modules"]), result["modules"]
    assert REPO_ROOT.name not in json.dumps(result["modules"])
    # the processor's error classes are the ones its parts raise (transformers keys each entry module's copy by a
    # hash of its files, so separately loaded Auto classes are separate copies; the processor's parts are its own)
    assert result["same_errors"]
    assert (result["fps"], result["image_min_pixels"]) == (1, 32 * 32 * 32)
    direct = InternVideo3Processor(tokenizer=tokenizer, fps=1)
    expected = direct.apply_chat_template(
        [{"role": "user", "content": [{"type": "video", "video": str(DEMO_VIDEO), **BUDGET},
                                      {"type": "text", "text": "What?"}]}],
        tokenize=True, return_dict=True, add_generation_prompt=True,
    )  # fmt: skip
    assert result["grid"] == expected["video_grid_thw"].tolist()
    assert result["tokens"] == expected["input_ids"].shape[1]


def test_a_folder_written_before_the_split_still_loads(tokenizer, tmp_path):
    """Before issue 24 the processor's settings sat flat in processor_config.json, with no image/video processor
    configs; such a folder (as the old code wrote it) loads with its settings."""
    folder = tmp_path / "legacy"
    tokenizer.save_pretrained(folder)
    for name in REMOTE_CODE:
        shutil.copyfile(REPO_ROOT / name, folder / name)
    shutil.copyfile(REPO_ROOT / "assets" / "chat_template.jinja", folder / "chat_template.jinja")
    legacy = {
        "auto_map": {"AutoProcessor": "processing_internvideo3.InternVideo3Processor"},
        "processor_class": "InternVideo3Processor", "fps": 1.0, "max_frames": 6, "min_frames": 4,
        "min_pixels": 16384, "max_pixels": 131072, "total_pixels": 117964800, "video_budget": "per_frame",
        "image_min_pixels": None, "image_max_pixels": None, "image_resize_backend": "pil",
        "video_resize_backend": "torch", "padding_side": "left", "patch_size": 16, "merge_size": 2,
        "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    }  # fmt: skip
    (folder / "processor_config.json").write_text(json.dumps(legacy))
    loaded = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    assert (loaded.fps, loaded.max_frames, loaded.min_pixels, loaded.max_pixels) == (1.0, 6, 16384, 131072)
    # processor-level min/max_pixels bound images too, as before the split
    assert (loaded.image_min_pixels, loaded.image_max_pixels) == (16384, 131072)
    direct = InternVideo3Processor(tokenizer=tokenizer, fps=1.0, max_frames=6, min_pixels=16384, max_pixels=131072)
    messages = [{"role": "user", "content": [{"type": "video", "video": str(DEMO_VIDEO)}, {"type": "text", "text": "?"}]}]
    kwargs = {"tokenize": True, "return_dict": True, "add_generation_prompt": True}
    ours, theirs = loaded.apply_chat_template(messages, **kwargs), direct.apply_chat_template(messages, **kwargs)
    assert ours["video_grid_thw"].tolist() == theirs["video_grid_thw"].tolist()
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()


def test_the_parts_alone_give_the_processors_pixels(tokenizer):
    processor = InternVideo3Processor(tokenizer=tokenizer)
    videos = processor.video_processor(str(DEMO_VIDEO), **BUDGET)
    both = processor(text="<|vision_start|><|video_pad|><|vision_end|>", videos=str(DEMO_VIDEO), **BUDGET)
    assert videos["pixel_values_videos"].equal(both["pixel_values_videos"])
    assert videos["video_grid_thw"].tolist() == both["video_grid_thw"].tolist()
    with pytest.raises(TypeError, match="unexpected keyword arguments: \\['fsp'\\]"):
        processor.video_processor(str(DEMO_VIDEO), fsp=2)
    with pytest.raises(ValueError, match="resize_backend must be one of"):
        type(processor.image_processor)(resize_backend="lanczos")
    with pytest.raises(TypeError, match="image_processor must be an InternVideo3ImageProcessor, got Qwen2Tokenizer"):
        InternVideo3Processor(tokenizer)  # the pre-split positional order: a clear error, not a broken processor


def test_settings_are_validated_once_where_they_enter(tokenizer, monkeypatch):
    """A chat video item's settings are merged and checked once (before the split: in `_video_settings` and again
    inside `load_video` on the same values); the merged settings are passed on, never checked again."""
    processor = InternVideo3Processor(tokenizer=tokenizer)
    calls = []
    original = vision_settings_internvideo3.check_settings

    def spy(settings, *args, **kwargs):
        calls.append(dict(settings))
        return original(settings, *args, **kwargs)

    monkeypatch.setattr(vision_settings_internvideo3, "check_settings", spy)
    messages = [{"role": "user", "content": [{"type": "video", "video": str(DEMO_VIDEO), **BUDGET},
                                             {"type": "text", "text": "?"}]}]  # fmt: skip
    processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert len(calls) == 1 and calls[0]["max_pixels"] == BUDGET["max_pixels"]
    with pytest.raises(ValueError, match=r"fps must be a number > 0 \(frames per second of video\), got -1"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video", "video": str(DEMO_VIDEO),
                                                                     "fps": -1}]}], tokenize=True)  # fmt: skip


def test_no_processor_file_is_over_800_lines():
    for name in REMOTE_CODE[1:]:
        lines = (REPO_ROOT / name).read_text(encoding="utf-8").count("\n")
        assert lines <= 800, f"{name}: {lines} lines"
