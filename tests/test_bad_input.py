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

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from tests.conftest import SCRIPTS_DIR, remux_faststart


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
    # a max_pixels alone below the default min_pixels is honoured (the default yields): test_processor_settings.py
    (dict(video_start=-1), ["video_start", "got -1", ">= 0"]),
    (dict(video_end=-1), ["video_end", "got -1", ">= 0"]),
    (dict(video_start=5, video_end=1), ["video_start (5 s)", "video_end (1 s)", "<="]),
    (dict(video_start=2.5, video_end=2), ["video_start (2.5 s)", "video_end (2 s)"]),
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
    # both bounds given and in conflict; one given alone beyond the default is honoured (test_processor_settings.py)
    with pytest.raises(ValueError, match=r"image_min_pixels \(20000000\) must be <= image_max_pixels \(16777216\)"):
        processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=[image], image_min_pixels=20_000_000,
                  image_max_pixels=16_777_216)  # fmt: skip


def test_bad_processor_config_fails_at_load_naming_the_setting(small_checkpoint, tmp_path):
    import json

    folder = tmp_path / "ckpt"
    shutil.copytree(small_checkpoint, folder)
    original = json.loads((folder / "processor_config.json").read_text())
    for change, message in (({"fps": 0}, r"fps must be a number > 0 .*got 0"),
                            ({"min_frames": 10, "max_frames": 5}, r"min_frames \(10\) must be <= max_frames \(5\)")):
        (folder / "processor_config.json").write_text(json.dumps({**original, **change}))
        with pytest.raises(ValueError, match=message):
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
    assert grid(video_start=4.0, video_end=4.0, nframes=1, max_pixels=128 * 32 * 32)[0] == 1  # a still at 4 s


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
    path = remux_faststart(videos_dir / "snow_dog.mp4", tmp_path_factory.mktemp("faststart") / "snow_dog_faststart.mp4")
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
    assert processor.TruncatedVideoWarning is module.TruncatedVideoWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", processor.TruncatedVideoWarning)
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
    with pytest.raises(ValueError, match=r"video pixels need `video_grid_thw`"):
        model(input_ids=inputs["input_ids"], pixel_values_videos=inputs["pixel_values_videos"])
    image = np.full((64, 64, 3), 200, np.uint8)
    inputs = processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=[image])
    with pytest.raises(ValueError, match=r"image pixels need `image_grid_thw`"):
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
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = AutoModelForCausalLM.from_pretrained("internvideo3-tests/small", trust_remote_code=True)
print(type(model).__name__)
for w in caught:
    if "config-vs-weights check" in str(w.message):
        print("WARNING:", w.message)
"""


@pytest.fixture(scope="module")
def hub_cache(small_checkpoint, tmp_path_factory):
    """A Hugging Face cache holding the small checkpoint as Hub repo `internvideo3-tests/small` (what a download
    leaves: refs/main -> a snapshot folder)."""
    cache = tmp_path_factory.mktemp("hub")
    revision = "0" * 40
    repo = cache / "models--internvideo3-tests--small"
    shutil.copytree(small_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


def test_hub_lookup_offline_says_the_weights_check_was_skipped(hub_cache, tmp_path):
    """HF_HUB_OFFLINE=1 with the files cached: the model loads, the header lookup cannot run and says so (a real
    process, as the variable is read at import). Before: `except Exception` swallowed it, and any bug, silently."""
    import os

    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", HUB_OFFLINE_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "InternVideo3ForConditionalGeneration" in result.stdout, result.stdout
    (warning,) = [line for line in result.stdout.splitlines() if line.startswith("WARNING:")]
    assert "OfflineModeIsEnabled" in warning and "'internvideo3-tests/small'" in warning and "skipped" in warning


def test_hub_lookup_with_local_files_only_says_the_weights_check_was_skipped(hub_cache):
    """local_files_only=True must not ask the Hub at all: the check is skipped, with a warning saying so."""
    with pytest.warns(UserWarning, match=r"local_files_only=True: the config-vs-weights check .* was skipped"):
        model = AutoModelForCausalLM.from_pretrained("internvideo3-tests/small", cache_dir=str(hub_cache),
                                                     local_files_only=True, trust_remote_code=True)
    assert type(model).__name__ == "InternVideo3ForConditionalGeneration"


# ----------------------------------------------------------------------------------------------------------------------
# Converter: every CLI value checked, one `error:` line, nothing written
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_source(tmp_path_factory):
    """A tiny Llama checkpoint (GQA 4 query / 2 KV heads, vocabulary 512) with its own 512-token BPE tokenizer."""
    from tests.test_convert import make_source

    folder = tmp_path_factory.mktemp("src") / "llama"
    make_source("llama", folder)
    return folder


FAST_CLI = ["--kv-lora-rank", "16", "--calibration-tokens", "64", "--calibration-seq-len", "32", "--dtype", "fp32"]


def cli_error(capsys, *argv) -> str:
    """Run the converter CLI entry point; assert exit status 2 and exactly one `error:` line; return that line."""
    from internvideo3.convert.gqa_to_m2la import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def text_file(path, content: bytes):
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("flag,value,words", [
    ("--kv-lora-rank-list", "8,x", ["--kv-lora-rank-list", "'x'", "integers >= 1"]),
    ("--kv-lora-rank-list", "8,0", ["--kv-lora-rank-list", ">= 1", "got 0"]),
    ("--kv-lora-rank", "0", ["--kv-lora-rank", ">= 1", "got 0"]),
    ("--kv-lora-rank", "-3", ["--kv-lora-rank", ">= 1", "got -3"]),
    ("--kv-lora-rank", "abc", ["--kv-lora-rank", "'abc'"]),
    ("--kv-lora-rank", "49", ["--kv-lora-rank 49", "larger than possible", "1..48"]),
    ("--calibration-seq-len", "0", ["--calibration-seq-len", ">= 1", "got 0"]),
    ("--calibration-tokens", "0", ["--calibration-tokens", ">= 1", "got 0"]),
    ("--calibration-tokens", "1.5", ["--calibration-tokens", "'1.5'"]),
    ("--video-fps", "0", ["--video-fps", "> 0"]),
    ("--video-fps", "nan", ["--video-fps", "nan"]),
    ("--video-max-frames", "0", ["--video-max-frames", ">= 1"]),
    ("--max-shard-size-gb", "-1", ["--max-shard-size-gb", "> 0"]),
    ("--rope-dim", "0", ["--rope-dim", ">= 1"]),
    ("--v-head-dim", "0", ["--v-head-dim", ">= 1"]),
    ("--qk-nope-dim", "-1", ["--qk-nope-dim", ">= 0"]),
    ("--dtype", "fp8", ["--dtype", "'fp8'"]),
    ("--qk-norm", "off", ["--qk-norm", "'off'"]),
    ("--calibration", "EMPTY", ["--calibration", "empty.txt is empty"]),
    ("--calibration", "BLANK", ["--calibration", "blank.txt is empty"]),
    ("--calibration", "BINARY", ["--calibration", "noise.txt is not UTF-8 text"]),
    ("--calibration", "MISSING", ["--calibration", "not found", "missing.txt"]),
])
def test_converter_cli_rejects_bad_values_naming_the_flag(llama_source, tmp_path, capsys, flag, value, words):
    """Before: tracebacks (ZeroDivisionError, int() of 'x'), silent acceptance (--calibration-tokens 0, a binary
    calibration file), or rank 0 reported as "larger than possible"."""
    files = {"EMPTY": lambda: text_file(tmp_path / "empty.txt", b""),
             "BLANK": lambda: text_file(tmp_path / "blank.txt", b" \n\t\n"),
             "BINARY": lambda: text_file(tmp_path / "noise.txt", bytes(np.random.default_rng(0).integers(0, 256, 4096,
                                                                                                           np.uint8))),
             "MISSING": lambda: str(tmp_path / "missing.txt")}
    value = files[value]() if value in files else value
    out = tmp_path / "out"
    line = cli_error(capsys, "--src", str(llama_source), "--out", str(out), *FAST_CLI, flag, value)
    assert all(word in line for word in words), line
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_converter_names_a_truncated_source_file(llama_source, tmp_path, capsys, sharded):
    """Before: safetensors' "incomplete metadata" traceback without the file's name."""
    src = tmp_path / "src"
    shutil.copytree(llama_source, src)
    if sharded:  # a sharded source with an index: the header check must not wait for the first tensor read
        from transformers import AutoModelForCausalLM as Auto

        (src / "model.safetensors").unlink()
        Auto.from_pretrained(str(llama_source)).save_pretrained(src, max_shard_size="100KB")
        victim = sorted(src.glob("model-*.safetensors"))[-1]
    else:
        victim = src / "model.safetensors"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    line = cli_error(capsys, "--src", str(src), "--out", str(tmp_path / "out"), *FAST_CLI)
    assert victim.name in line and "truncated or corrupt" in line
    assert not (tmp_path / "out").exists()


def test_converter_names_a_corrupt_calibration_video(tmp_path, capsys):
    """Before: a calibration video that does not decode ended the CLI in a VideoLoadError traceback."""
    from tests.test_convert import make_source

    make_source("qwen3_vl", tmp_path / "vl")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)))
    line = cli_error(capsys, "--src", str(tmp_path / "vl"), "--out", str(tmp_path / "out"), *FAST_CLI,
                     "--calibration", str(broken))
    assert line.startswith("error: --calibration: cannot open video") and "broken.mp4" in line, line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Converter: the tokenizer that travels must fit the model
# ----------------------------------------------------------------------------------------------------------------------
def test_converter_tokenizer_must_fit_the_model(llama_source, tmp_path, capsys):
    """Before: a source without tokenizer files was calibrated with the Qwen3 tokenizer (ids folded modulo 512) and the
    output shipped that 151,669-token tokenizer: the converted model crashed in its embedding on the first prompt."""
    from transformers import AutoTokenizer

    from tests.conftest import TOKENIZER_DIR

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copyfile(llama_source / name, bare / name)
    out = tmp_path / "out"
    line = cli_error(capsys, "--src", str(bare), "--out", str(out), *FAST_CLI)
    assert "has no tokenizer" in line and "--tokenizer PATH" in line
    line = cli_error(capsys, "--src", str(bare), "--out", str(out), *FAST_CLI, "--tokenizer", str(TOKENIZER_DIR))
    assert "151669 tokens" in line and "embeds only 512" in line and "--tokenizer" in line
    line = cli_error(capsys, "--src", str(bare), "--out", str(out), *FAST_CLI, "--tokenizer", str(tmp_path))
    assert f"--tokenizer {tmp_path}" in line and "no tokenizer.json" in line
    assert not out.exists()

    # the tokenizer the model was trained with: calibrates, ships, and the converted model answers a prompt
    from internvideo3.convert.gqa_to_m2la import main

    main(["--src", str(bare), "--out", str(out), *FAST_CLI, "--tokenizer", str(llama_source)])
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval()
    assert len(tokenizer) <= model.config.vocab_size
    ids = tokenizer("Return the sum of the numbers.", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 3


# ----------------------------------------------------------------------------------------------------------------------
# Converter: two runs never destroy each other's output, --overwrite never loses the old folder
# ----------------------------------------------------------------------------------------------------------------------
def test_concurrent_conversions_into_one_out_never_destroy_each_other(llama_source, tmp_path):
    """This process converts into `out`; while it is at layer 0, a second real process runs the CLI (the console
    script, from another directory) into the same `out` (with and without --overwrite). Before: the second run
    deleted the first one's temporary folder as a "leftover". Now it exits with one `error:` line and touches
    nothing; the first run finishes and loads."""
    from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert

    out = tmp_path / "out"
    seen = {}

    def second_run(i):
        if i:
            return
        (own,) = tmp_path.glob(".out.incomplete-*")
        before = sorted(p.name for p in own.iterdir())
        runs = [subprocess.Popen(  # both at once: the test waits for one process start, not two
            [str(SCRIPTS_DIR / "internvideo3-convert"), "--src", str(llama_source), "--out", str(out), *FAST_CLI,
             *extra], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for extra in ([], ["--overwrite"])]
        seen["results"] = [(run.wait(timeout=300), run.communicate()[1]) for run in runs]
        seen["intact"] = own.is_dir() and sorted(p.name for p in own.iterdir()) == before

    convert(llama_source, out, ConvertOptions(kv_lora_rank=16, calibration_tokens=64, calibration_seq_len=32,
                                              dtype="fp32", progress=False), layer_hook=second_run)
    for returncode, stderr in seen["results"]:  # a real process: exit status 2, one `error:` line, no traceback
        assert returncode == 2, stderr[-2000:]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "being written by another run" in lines[0], lines
    assert seen["intact"]
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".out.incomplete-*"))
    AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)


def test_overwrite_keeps_the_old_folder_until_the_new_one_is_in_place(llama_source, tmp_path, capsys):
    """Before: --overwrite deleted the old folder first; a crash before the rename left nothing."""
    import json

    from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert

    out = tmp_path / "out"
    options = dict(calibration_tokens=64, calibration_seq_len=32, dtype="fp32", progress=False)
    rank = lambda: json.loads((out / "config.json").read_text())["kv_lora_rank"]  # noqa: E731
    convert(llama_source, out, ConvertOptions(kv_lora_rank=16, **options))

    def crash(i):
        assert rank() == 16  # the old folder is untouched while the new one is written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(llama_source, out, ConvertOptions(kv_lora_rank=8, overwrite=True, **options), layer_hook=crash)
    assert rank() == 16 and sorted(p.name for p in tmp_path.iterdir() if p.name != ".out.lock") == ["out"]

    # a run killed between moving the old folder aside and moving the new one in leaves exactly this state:
    aside = tmp_path / ".out.replaced-killed"
    out.rename(aside)
    (tmp_path / ".out.incomplete-killed").mkdir()
    capsys.readouterr()
    with pytest.raises(FileExistsError):  # the next run puts the old folder back, then refuses to replace it
        convert(llama_source, out, ConvertOptions(kv_lora_rank=8, **options))
    assert "restored" in capsys.readouterr().err and rank() == 16 and not aside.exists()

    convert(llama_source, out, ConvertOptions(kv_lora_rank=8, overwrite=True, **options))
    assert rank() == 8 and sorted(p.name for p in tmp_path.iterdir() if p.name != ".out.lock") == ["out"]
    AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
