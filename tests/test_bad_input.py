"""Bad input ends in a clear error or warning that names the input, and nothing is lost (issue 12).

Everything goes through the public entry points users take: the processor and the model from a checkpoint folder with
`trust_remote_code=True`, the converter through its CLI in a subprocess. The truncated video is a real clip remuxed
with its index at the front (`movflags=faststart`, as web-ready mp4s are) and cut short, i.e. a partial download.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import av
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def processor(small_checkpoint):
    return AutoProcessor.from_pretrained(str(small_checkpoint), trust_remote_code=True)


@pytest.fixture(scope="module")
def model(small_checkpoint):
    return AutoModelForCausalLM.from_pretrained(str(small_checkpoint), trust_remote_code=True).eval()


def remote_module(obj):
    """The remote-code module an object was loaded from (its warning and error classes live there)."""
    return sys.modules[type(obj).__module__]


def video_item(path, **settings) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": str(path), **settings},
                                         {"type": "text", "text": "What happens?"}]}]


SMALL = dict(max_frames=4, max_pixels=128 * 32 * 32)


# ----------------------------------------------------------------------------------------------------------------------
# Video settings: validated once where they are merged, never clamped into something else
# ----------------------------------------------------------------------------------------------------------------------
BAD_SETTINGS = [
    # (settings, words the message must contain: the setting, the value, the allowed range)
    (dict(fps=0), ["fps", "got 0", "> 0"]),
    (dict(fps=-1), ["fps", "got -1", "> 0"]),
    (dict(fps=float("nan")), ["fps", "nan", "> 0"]),
    (dict(fps=float("inf")), ["fps", "inf", "> 0"]),
    (dict(fps="fast"), ["fps", "'fast'", "str", "> 0"]),
    (dict(fps=True), ["fps", "True", "bool"]),
    (dict(max_frames=0), ["max_frames", "got 0", ">= 1"]),
    (dict(max_frames=2.5), ["max_frames", "2.5", "integer"]),
    (dict(min_frames=0), ["min_frames", "got 0", ">= 1"]),
    (dict(min_frames=9, max_frames=8), ["min_frames (9)", "max_frames (8)"]),
    (dict(nframes=0), ["nframes", "got 0", ">= 1"]),
    (dict(num_frames="8"), ["num_frames", "'8'", "str"]),
    (dict(min_pixels=0), ["min_pixels", "got 0", "> 0"]),
    (dict(max_pixels=0), ["max_pixels", "got 0", "> 0"]),
    (dict(total_pixels=-5), ["total_pixels", "got -5", "> 0"]),
    (dict(max_pixels=[1]), ["max_pixels", "[1]", "list"]),
    (dict(min_pixels=1_000_000, max_pixels=100_000), ["min_pixels (1000000)", "max_pixels (100000)"]),
    (dict(max_pixels=100_000), ["min_pixels (131072)", "max_pixels (100000)", "processor's setting"]),
    (dict(video_start=-1), ["video_start", "got -1", ">= 0"]),
    (dict(video_end=0), ["video_end", "got 0", "> 0"]),
    (dict(video_start=5, video_end=1), ["video_start (5 s)", "video_end (1 s)"]),
    (dict(video_start=2, video_end=2), ["video_start (2 s)", "video_end (2 s)"]),
    (dict(resized_height=64), ["resized_height", "resized_width"]),
    (dict(resized_height=0, resized_width=64), ["resized_height", "got 0", ">= 1"]),
    (dict(size={"shortest_edge": 0, "longest_edge": 10**6}), ["shortest_edge", "got 0", "> 0"]),
    (dict(size={"longest_edge": 10**6}), ["size", "shortest_edge", "longest_edge"]),
    (dict(size={"shortest_edge": 10**6, "longest_edge": 10**5}), ["shortest_edge", "longest_edge", "<="]),
    (dict(video_budget="all"), ["video_budget", "'all'"]),
]


@pytest.mark.parametrize("settings,words", BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
def test_bad_video_setting_of_an_item_names_setting_value_and_range(processor, videos_dir, settings, words):
    """Before: fps=0 or -1 gave 4 frames, max_frames=0 one frame, a min above max was quietly replaced."""
    with pytest.raises(ValueError) as error:
        processor.apply_chat_template(video_item(videos_dir / "snow_dog.mp4", **settings), tokenize=True,
                                      add_generation_prompt=True)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


@pytest.mark.parametrize("settings,words", [
    (dict(fps=0), ["fps", "got 0"]),
    (dict(max_frames=-2), ["max_frames", "got -2"]),
    (dict(videos_kwargs={"min_pixels": 0}), ["min_pixels", "got 0"]),
    (dict(fps=[2.0, -1.0]), ["fps", "got -1.0"]),  # qwen-vl-utils' one fps per video
])
def test_bad_video_setting_of_a_call_is_named(processor, videos_dir, settings, words):
    clip = str(videos_dir / "snow_dog.mp4")
    n = len(settings["fps"]) if isinstance(settings.get("fps"), list) else 1
    with pytest.raises(ValueError) as error:
        processor(text="<|vision_start|><|video_pad|><|vision_end|>" * n, videos=[clip] * n, **settings)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_bad_image_setting_is_named(processor):
    image = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(ValueError, match=r"image_max_pixels must be a number > 0 .*got 0"):
        processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=[image], image_max_pixels=0)
    with pytest.raises(ValueError, match=r"image_min_pixels \(20000000\) must be <= image_max_pixels \(16777216\)"):
        processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=[image], image_min_pixels=20_000_000)


def test_bad_processor_config_fails_at_load_naming_the_setting(small_checkpoint, tmp_path):
    import json

    folder = tmp_path / "ckpt"
    shutil.copytree(small_checkpoint, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["fps"] = 0
    (folder / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"fps must be a number > 0 .*got 0"):
        AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)


def test_valid_neighbouring_settings_still_work(processor, videos_dir):
    """In range, odd but legal: a max_frames below the default min_frames caps the count (transformers and
    qwen-vl-utils do the same); numpy scalars, integral floats and float pixel budgets are numbers."""
    clip = videos_dir / "snow_dog.mp4"

    def grid(**settings):
        out = processor.apply_chat_template(video_item(clip, **settings), tokenize=True, add_generation_prompt=True)
        return out["video_grid_thw"][0].tolist()

    assert grid(max_frames=2, max_pixels=128 * 32 * 32)[0] == 1  # 2 frames = 1 temporal patch
    assert grid(max_frames=np.int64(4), max_pixels=128 * 32 * 32)[0] == 2
    assert grid(nframes=6.0, max_pixels=128 * 32 * 32)[0] == 3
    assert grid(fps=0.5, max_pixels=128 * 32 * 32, total_pixels=128 * 32 * 32 * 4 * 0.9)[0] == 2  # 8 s at 0.5 fps
    assert grid(video_start=1.0, video_end=3.0, fps=2, max_pixels=128 * 32 * 32)[0] == 2  # 1..3 s at 2 fps: 4 frames


# ----------------------------------------------------------------------------------------------------------------------
# Empty frame arrays
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("video", [
    np.zeros((0, 64, 64, 3), np.uint8),
    torch.zeros(0, 3, 64, 64, dtype=torch.uint8),
    np.zeros((4, 0, 64, 3), np.uint8),
    [],
], ids=["numpy-THWC", "torch-TCHW", "zero-height", "empty-list"])
@pytest.mark.parametrize("do_sample_frames", [None, True])
def test_zero_frame_video_is_a_clear_error(processor, video, do_sample_frames):
    """Before: ZeroDivisionError deep in resizing."""
    error_class = remote_module(processor).VideoLoadError
    with pytest.raises(error_class, match=r"zero frames|empty frames"):
        processor(text="<|vision_start|><|video_pad|><|vision_end|>", videos=[video], do_sample_frames=do_sample_frames)


# ----------------------------------------------------------------------------------------------------------------------
# Truncated video files
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faststart_clip(videos_dir, tmp_path_factory):
    """snow_dog.mp4 (40 frames, 5 fps, 8 s) remuxed without re-encoding with its index at the front."""
    path = tmp_path_factory.mktemp("faststart") / "snow_dog_faststart.mp4"
    with av.open(str(videos_dir / "snow_dog.mp4")) as source, \
            av.open(str(path), "w", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index really is at the front
    return path


def test_truncated_video_warns_naming_file_and_durations(processor, faststart_clip, tmp_path):
    """Before: 13 of 40 frames decoded without a word."""
    module = remote_module(processor)
    partial = tmp_path / "partial_download.mp4"
    data = faststart_clip.read_bytes()
    partial.write_bytes(data[: len(data) // 3])
    with pytest.warns(module.TruncatedVideoWarning) as record:
        out = processor.apply_chat_template(video_item(partial, **SMALL), tokenize=True, add_generation_prompt=True)
    message = str(record[0].message)
    assert "partial_download.mp4" in message and "declares 8.000 s" in message and "of 40 declared frames" in message
    present = float(message.split("span ")[1].split(" s")[0])
    assert 1.0 < present < 4.0  # a third of the data: about a third of the clip
    assert out["video_grid_thw"][0, 0] == 2  # the frames that exist are still used

    # the documented way to make it an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", module.TruncatedVideoWarning)
        with pytest.raises(module.TruncatedVideoWarning, match="partial_download.mp4"):
            processor.apply_chat_template(video_item(partial, **SMALL), tokenize=True, add_generation_prompt=True)


def test_complete_videos_never_warn(processor, faststart_clip, videos_dir):
    """The intact faststart copy and every real clip (mp4, Matroska without stream duration, HEVC, out-of-order
    timestamps) load without a truncation warning."""
    clips = [faststart_clip] + [videos_dir / n for n in ("snow_dog.mp4", "pole_vault.mp4", "av1_640x360.mkv",
                                                         "hevc_128x128.mp4", "unordered_timestamps.mov")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", remote_module(processor).TruncatedVideoWarning)
        for clip in clips:
            processor.load_video(clip, nframes=2, max_pixels=128 * 32 * 32)


# ----------------------------------------------------------------------------------------------------------------------
# Model inputs
# ----------------------------------------------------------------------------------------------------------------------
def test_video_pixels_without_grid_is_a_clear_error(model, processor, videos_dir):
    """Before: AttributeError on None."""
    inputs = processor.apply_chat_template(video_item(videos_dir / "snow_dog.mp4", **SMALL), tokenize=True,
                                           add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"pixel_values_videos was given without video_grid_thw"):
        model(input_ids=inputs["input_ids"], pixel_values_videos=inputs["pixel_values_videos"])
    image = np.full((64, 64, 3), 200, np.uint8)
    inputs = processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=[image])
    with pytest.raises(ValueError, match=r"pixel_values was given without image_grid_thw"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])


def test_right_padded_generation_warns_like_transformers(model, processor):
    """Before: silent (transformers' own check needs pad_token_id in the generation config)."""
    texts = ["Tell me about the snow and the dog.", "Hi"]
    right = processor(text=texts, padding=True, padding_side="right")
    with pytest.warns(UserWarning, match=r"right-padding was detected.*padding_side='left'"):
        model.generate(**right, max_new_tokens=2, do_sample=False)
    left = processor(text=texts)  # the processor pads on the left by default
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.generate(**left, max_new_tokens=2, do_sample=False)
        model.generate(**processor(text=["Hi"]), max_new_tokens=2, do_sample=False)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.999, 4], ids=["half", "last-byte-missing", "header-cut"])
def test_truncated_checkpoint_names_the_file(small_checkpoint, tmp_path, keep):
    """Before: safetensors' "incomplete metadata" without a file name."""
    folder = tmp_path / "ckpt"
    shutil.copytree(small_checkpoint, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(OSError, match=r"model\.safetensors.*truncated or corrupt"):
        AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True)


HUB_OFFLINE_SCRIPT = """
import warnings
from transformers import AutoModelForCausalLM
for kwargs in ({}, {"local_files_only": True}):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForCausalLM.from_pretrained("internvideo3-tests/small", trust_remote_code=True, **kwargs)
    print(type(model).__name__)
    for w in caught:
        if "config-vs-weights check" in str(w.message):
            print("WARNING:", w.message)
"""


def test_hub_lookup_failure_says_the_weights_check_was_skipped(small_checkpoint, tmp_path):
    """A Hub repo id whose files are in the cache loads offline (HF_HUB_OFFLINE=1, then also local_files_only=True);
    the header lookup cannot run and says so. Before: `except Exception` swallowed it (and any bug) silently."""
    import os

    cache = tmp_path / "hub"
    revision = "0" * 40
    repo = cache / "models--internvideo3-tests--small"
    shutil.copytree(small_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", HUB_OFFLINE_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("InternVideo3ForConditionalGeneration") == 2, result.stdout
    warnings_ = [line for line in result.stdout.splitlines() if line.startswith("WARNING:")]
    assert len(warnings_) == 2, result.stdout
    assert "OfflineModeIsEnabled" in warnings_[0] and "local_files_only=True" in warnings_[1]
    assert all("'internvideo3-tests/small'" in w and "skipped" in w for w in warnings_)
