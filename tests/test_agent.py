"""The long-video agent (SPEC §12): tools on real clips, tool-call parsing, latent-cache reuse across turns checked
against a full re-prefill, the loop with the small checkpoint and, for the tool plumbing only, a scripted stand-in."""

from __future__ import annotations

import copy
import fractions
import json
import re
import subprocess
import sys
import types

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

from conftest import DEMO_VIDEO, REPO_ROOT
from internvideo3.agent import (
    AgentBudget,
    ClipSettings,
    LatentCacheChat,
    Reply,
    ToolRegistry,
    ToolResult,
    VideoAgent,
    parse_tool_calls,
)
from internvideo3.agent import media
from internvideo3.agent.cli import main as agent_main
from internvideo3.agent.loop import FINAL_STEP_PROMPT

TINY = dict(fps=1.0, max_frames=4, max_pixels=16 * 32 * 32)  # 16 merged patches per frame: small prompts on CPU
CLIP_FPS = 5  # frames per second of the made clip


# ----------------------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_processor(small_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(small_checkpoint, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(small_checkpoint, trust_remote_code=True)
    return model, processor


def _frames(path, count, skip=0):
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= skip:
                out.append(frame.to_ndarray(width=320, height=240, format="rgb24"))
            if len(out) == count:
                break
    return out


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory, videos_dir):
    """A real clip with two hard cuts, at 3.0 s and 6.0 s (snow_dog | pole_vault | snow_dog, 5 fps, 320x240,
    MPEG-4 Part 2) and a 440 Hz mono AAC audio track at 16 kHz, written with PyAV."""
    snow = _frames(videos_dir / "snow_dog.mp4", 15)
    vault = _frames(videos_dir / "pole_vault.mp4", 15, skip=60)  # inside the first shot of pole_vault.mp4
    sequence = snow + vault + snow[:10]
    path = tmp_path_factory.mktemp("clips") / "cuts_with_audio.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=CLIP_FPS)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i, array in enumerate(sequence):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, fractions.Fraction(1, CLIP_FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        rate = 16000
        t = np.arange(int(rate * len(sequence) / CLIP_FPS)) / rate
        signal = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        size = audio.frame_size or 1024
        for start in range(0, len(signal), size):
            frame = av.AudioFrame.from_ndarray(signal[None, start : start + size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, fractions.Fraction(1, rate)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path


class ScriptedStandInModel(LatentCacheChat):
    """A scripted stand-in for the model, NOT a model: it replays fixed replies so the tests can check the tool
    plumbing (order of calls, results entering the context). Videos are still decoded by the real processor."""

    def __init__(self, processor, replies, side_replies=()):
        self.processor = processor
        self.replies, self.side_replies = list(replies), list(side_replies)
        self.seen: list[list[dict]] = []
        self.prefill_tokens_saved = self.prefilled_tokens = 0
        self._videos = {}

    def respond(self, messages, tools=None, max_new_tokens=256, max_context_tokens=None, **kwargs):
        self.seen.append(copy.deepcopy(messages))
        return Reply(text=self.replies.pop(0) if self.replies else "stand-in has no more replies")

    def fork(self):
        side = ScriptedStandInModel(self.processor, self.side_replies)
        side._videos = self._videos
        return side

    def cache_bytes(self):
        return 0

    def cache_tokens(self):
        return 0


def _call(name, **arguments):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


# ----------------------------------------------------------------------------------------------------------------------
# tool-call parsing and the registry
# ----------------------------------------------------------------------------------------------------------------------
def test_parse_tool_calls_valid_several_and_text_around():
    text = "I will look closer.\n" + _call("inspect_clip", start_s=1.5, end_s=4) + "\nthen\n" + _call("segment") + " ok"
    outside, calls = parse_tool_calls(text)
    assert outside == "I will look closer. then ok"
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("inspect_clip", {"start_s": 1.5, "end_s": 4}, None),
        ("segment", {}, None),
    ]
    # arguments as a JSON string (OpenAI style) are accepted
    _, calls = parse_tool_calls('<tool_call>{"name": "note", "arguments": "{\\"text\\": \\"a\\"}"}</tool_call>')
    assert calls[0].arguments == {"text": "a"} and calls[0].error is None
    assert parse_tool_calls("The dog jumps at 3 s.") == ("The dog jumps at 3 s.", [])


@pytest.mark.parametrize(
    "block, reason",
    [
        ('<tool_call>{"name": "segment", "arguments": {}</tool_call>', "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'string "name"'),
        ('<tool_call>{"name": "note", "arguments": [1]}</tool_call>', "must be an object"),
        ('<tool_call>{"name": "note", "arguments": "{oops"}</tool_call>', "not valid JSON"),
        ('text <tool_call>{"name": "segment", "argu', "unterminated"),
    ],
)
def test_parse_tool_calls_malformed_becomes_error(block, reason):
    _, calls = parse_tool_calls(block + _call("segment"))
    assert reason in calls[0].error
    assert calls[1].name == "segment" and calls[1].error is None  # a later valid call is still parsed


def test_registry_validates_and_never_raises():
    registry = ToolRegistry()

    def count(start_s: float, limit: int = 3) -> str:
        """Count things.

        Args:
            start_s: Time in seconds.
            limit: How many at most.
        """
        if start_s > 100:
            raise RuntimeError("boom")
        return f"{start_s}:{limit}"

    registry.register(count)
    assert registry.schemas()[0]["function"]["parameters"]["required"] == ["start_s"]
    assert registry.call("count", {"start_s": 2, "limit": 5.0}).text == "2:5"  # integral float -> int
    cases = {
        "unknown tool 'nope'": ("nope", {}),
        "unknown argument(s) ['x']": ("count", {"start_s": 1, "x": 1}),
        "missing required argument(s) ['start_s']": ("count", {}),
        "start_s='1' must be of type number": ("count", {"start_s": "1"}),
        "start_s=True must be of type number": ("count", {"start_s": True}),
        "limit=2.5 must be of type integer": ("count", {"start_s": 1, "limit": 2.5}),
        "count failed: RuntimeError: boom": ("count", {"start_s": 101}),
    }
    for expected, (name, args) in cases.items():
        result = registry.call(name, args)
        assert result.error and expected in result.text, (expected, result.text)


# ----------------------------------------------------------------------------------------------------------------------
# tools on real clips
# ----------------------------------------------------------------------------------------------------------------------
def _agent(session, video, **kwargs):
    return VideoAgent(session, video, coarse=ClipSettings(**TINY), **kwargs)


def test_inspect_clip_real_clip_seconds_and_frames(model_and_processor, videos_dir):
    _, processor = model_and_processor
    agent = _agent(ScriptedStandInModel(processor, []), videos_dir / "pole_vault.mp4")
    assert agent.duration == pytest.approx(144.67, abs=0.01)  # 434 frames at 3 fps
    result = agent.tools.call("inspect_clip", {"start_s": 10, "end_s": 20, "fps": 1, "max_pixels": 16 * 32 * 32})
    assert not result.error, result.text
    (item,) = result.videos
    assert (item["video_start"], item["video_end"], item["fps"]) == (10.0, 20.0, 1.0)
    frames, meta = agent.session.load_video(item)
    assert frames.shape[0] == 10 and frames.shape[0] % 2 == 0  # 1 fps over 10 s, whole temporal patches
    assert 10.0 <= meta.timestamps[0] < meta.timestamps[-1] <= 20.0  # seconds from the start of the video
    assert result.text.startswith("clip 10.0-20.0 s: 10 frames at 1 fps")
    denser = agent.tools.call("inspect_clip", {"start_s": 10, "end_s": 20, "fps": 3, "max_pixels": 16 * 32 * 32})
    frames, meta = agent.session.load_video(denser.videos[0])
    # every source frame from 10.0 to 20.0 s (3 fps: 31 frames), padded to whole 2-frame temporal patches
    assert frames.shape[0] == 32 and min(meta.timestamps) == 10.0 and max(meta.timestamps) == 20.0

    for args, message in [
        ({"start_s": 20, "end_s": 10}, "need 0 <= start_s < end_s"),
        ({"start_s": -1, "end_s": 5}, "need 0 <= start_s < end_s"),
        ({"start_s": 100, "end_s": 200}, "end_s=200 is past the end of the video (144.67 s)"),
        ({"start_s": 1, "end_s": 5, "fps": 0}, "fps=0 must be in"),
        ({"start_s": 1, "end_s": 5, "max_pixels": 10}, "max_pixels=10 must be in"),
    ]:
        result = agent.tools.call("inspect_clip", args)
        assert result.error and message in result.text, result.text
        assert not result.videos
    for name in ("summarize", "transcribe"):
        assert "past the end" in agent.tools.call(name, {"start_s": 0, "end_s": 999}).text


def test_segment_finds_the_cuts_of_a_real_clip(model_and_processor, cut_clip):
    _, processor = model_and_processor
    agent = _agent(ScriptedStandInModel(processor, []), cut_clip)
    assert agent.duration == pytest.approx(8.0)
    shots = media.detect_shots(cut_clip)
    assert len(shots) == 3
    for (start, end), (want_start, want_end) in zip(shots, [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)]):
        assert start == pytest.approx(want_start, abs=1 / CLIP_FPS) and end == pytest.approx(want_end, abs=1 / CLIP_FPS)
    text = agent.tools.call("segment", {}).text
    assert text.startswith("3 shots: shot 1: 0.00-3.00 s; shot 2: 3.00-6.00 s")


def test_audio_extraction_and_transcribe_message(model_and_processor, cut_clip, videos_dir):
    samples = media.extract_audio(cut_clip, 1.0, 3.0)
    assert samples.dtype == np.float32 and abs(len(samples) - 2 * media.WHISPER_SAMPLE_RATE) <= 160  # 10 ms
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.argmax(spectrum) * media.WHISPER_SAMPLE_RATE / len(samples)
    assert peak_hz == pytest.approx(440.0, abs=2.0)
    assert 0.3 < np.abs(samples).max() < 0.7  # the 0.5-amplitude sine, not silence
    with pytest.raises(ValueError, match="snow_dog.mp4.*has no audio track"):
        media.extract_audio(videos_dir / "snow_dog.mp4", 0.0, 1.0)

    _, processor = model_and_processor
    with_audio = _agent(ScriptedStandInModel(processor, []), cut_clip, whisper_model=None)
    result = with_audio.tools.call("transcribe", {"start_s": 0, "end_s": 4})
    assert result.error and result.text == f"error: {media.whisper_unavailable_reason(None)}"
    assert "faster-whisper" in result.text or "Whisper model folder" in result.text
    silent = _agent(ScriptedStandInModel(processor, []), videos_dir / "snow_dog.mp4")
    assert silent.tools.call("transcribe", {"start_s": 0, "end_s": 4}).text == "error: the video has no audio track"


def test_audio_is_decoded_from_the_requested_start(cut_clip, monkeypatch):
    """extract_audio seeks (PyAV) to just before the window instead of decoding from the start of the file (main fed
    the resampler every frame from 0 s), and gives the samples a decode from the start gives for that window."""
    from_start = media.extract_audio(cut_clip, 0.0, 7.0)
    fed = []
    resampler_class = av.AudioResampler

    class WatchedResampler:  # the real resampler; records the time of each frame it is fed
        def __init__(self, *args, **kwargs):
            self._resampler = resampler_class(*args, **kwargs)

        def resample(self, frame):
            if frame is not None:
                fed.append(frame.time)
            return self._resampler.resample(frame)

    monkeypatch.setattr(av, "AudioResampler", WatchedResampler)
    window = media.extract_audio(cut_clip, 5.0, 7.0)
    assert fed and min(fed) >= 4.0, min(fed)  # a pre-roll (AUDIO_PREROLL_S = 0.5 s) before 5 s, not 0 s
    start = 5 * media.WHISPER_SAMPLE_RATE
    assert len(window) == len(from_start) - start
    np.testing.assert_array_equal(window, from_start[start:])


def test_transcribe_loads_the_whisper_model_once_per_agent(model_and_processor, cut_clip, tmp_path, monkeypatch):
    """Two transcribe() calls load the Whisper model once (main loaded it on every call). faster-whisper and a Whisper
    model are not part of the test environment: a scripted stand-in for `faster_whisper.WhisperModel` (NOT a model)
    counts the loads and returns a fixed segment; the audio it receives is the real window."""
    loads, heard = [], []

    class ScriptedStandInWhisper:
        def __init__(self, model_dir, **kwargs):
            loads.append(model_dir)

        def transcribe(self, samples):
            heard.append(len(samples))
            return iter([types.SimpleNamespace(start=0.25, end=1.0, text=" beep ")]), None

    monkeypatch.setitem(sys.modules, "faster_whisper", types.SimpleNamespace(WhisperModel=ScriptedStandInWhisper))
    monkeypatch.setattr(media, "whisper_unavailable_reason", lambda model_dir: None)
    _, processor = model_and_processor
    agent = _agent(ScriptedStandInModel(processor, []), cut_clip, whisper_model=str(tmp_path))
    assert agent.tools.call("transcribe", {"start_s": 1, "end_s": 3}).text == "[1.2-2.0 s] beep"
    assert agent.tools.call("transcribe", {"start_s": 4, "end_s": 5}).text == "[4.2-5.0 s] beep"
    assert loads == [str(tmp_path)]
    assert [round(n / media.WHISPER_SAMPLE_RATE, 2) for n in heard] == [2.0, 1.0]


def test_model_tools_ground_summarize_verify_notes(model_and_processor, videos_dir):
    _, processor = model_and_processor
    stand_in = ScriptedStandInModel(
        processor, [], side_replies=["It is at [2.5, 4] seconds.", "no grounding here", "A man plays with a dog.",
                                     "Yes, at 3 s the dog jumps."]
    )  # fmt: skip
    agent = _agent(stand_in, videos_dir / "snow_dog.mp4")
    assert agent.tools.call("ground", {"query": "the dog jumps"}).text == "[2.5, 4.0]"
    assert "gave no [start_s, end_s]" in agent.tools.call("ground", {"query": "a cat"}).text
    assert agent.tools.call("summarize", {"start_s": 0, "end_s": 4}).text == "A man plays with a dog."
    verdict = agent.tools.call("verify", {"claim": "the dog jumps", "start_s": 2, "end_s": 4}).text
    assert verdict == "supported: Yes, at 3 s the dog jumps."
    side = agent.video_tools._side.seen
    assert side[0][0]["content"][0] == agent.coarse_item  # ground looks at the whole video
    assert side[2][0]["content"][0]["video_start"] == 0.0 and side[3][0]["content"][0]["video_end"] == 4.0
    assert agent.tools.call("note", {"text": "dog jumps at 3 s"}).text == "note 1 saved"
    agent.tools.call("note", {"text": "man kneels in snow"})
    assert agent.tools.call("search_notes", {"query": "when does the DOG jump"}).text == "note 1: dog jumps at 3 s"
    assert agent.tools.call("search_notes", {"query": "cat"}).text == "no note matches 'cat' (2 notes)"


# ----------------------------------------------------------------------------------------------------------------------
# cache reuse
# ----------------------------------------------------------------------------------------------------------------------
def test_cache_reuse_equals_full_prefill_and_counts_saved_tokens(model_and_processor, videos_dir, cut_clip):
    model, processor = model_and_processor
    video = str(videos_dir / "snow_dog.mp4")
    chat = LatentCacheChat(model, processor)
    embedded = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: embedded.append(i[0].numel()))
    messages = [
        {"role": "system", "content": "You are a video agent."},
        {"role": "user", "content": [{"type": "video", "video": video, **TINY, "min_pixels": TINY["max_pixels"]},
                                     {"type": "text", "text": "What happens?"}]},
    ]  # fmt: skip
    replies, previous, prompts = [], [], []
    try:
        for turn in range(5):
            reply = chat.respond(messages, max_new_tokens=4)
            replies.append(reply)
            full = processor.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
            ids = full["input_ids"][0].tolist()
            prompts.append(ids)
            counted = len(embedded)
            with torch.no_grad():
                reference = model(**full, use_cache=False, logits_to_keep=1).logits[0, -1]
            del embedded[counted:]  # count only what the chat ran
            torch.testing.assert_close(reply.logits[0], reference, rtol=1e-4, atol=1e-4)
            assert reply.prompt_tokens == len(ids)
            common = 0
            while common < min(len(previous), len(ids) - 1) and previous[common] == ids[common]:
                common += 1
            if turn == 3:  # the swapped clip's placeholders onward must be prefilled again
                common = min(common, ids.index(processor.video_token_id))
            assert reply.reused_tokens == common
            assert chat.cache_tokens() == len(chat.cached_ids) == len(ids) + reply.new_tokens - 1
            previous = ids + reply.token_ids[:-1]  # generate() never feeds its last token: the cache lacks it
            messages.append({"role": "assistant", "content": reply.text})
            if turn == 0:  # a tool returns a new clip: the vision tower encodes it in the suffix only
                clip = {"type": "video", "video": video, "video_start": 2.0, "video_end": 6.0, "fps": 1.0,
                        "max_frames": 4, "min_pixels": 16 * 1024, "max_pixels": 16 * 1024}  # fmt: skip
                messages.append({"role": "tool", "content": [{"type": "text", "text": "clip 2-6 s"}, clip]})
            elif turn == 1:
                messages.append({"role": "tool", "content": "note 1 saved"})
            elif turn == 2:  # another clip with the same frame grid and timestamps: same token ids, other pixels
                messages[1]["content"][0]["video"] = str(cut_clip)
            elif turn == 3:  # the history is edited: the cache is cropped back to the common prefix
                messages[1]["content"][1]["text"] = "What happens, in detail?"
    finally:
        hook.remove()
    assert replies[1].reused_tokens > replies[0].prompt_tokens  # the whole first turn came from the cache
    assert prompts[3][: len(prompts[2])] == prompts[2]  # swapping the clip changed no token id ...
    assert replies[3].reused_tokens < prompts[0].index(processor.video_token_id) + 1  # ... but the cache was cropped
    assert replies[4].reused_tokens < replies[0].prompt_tokens  # an edited question: cropped there
    saved = sum(r.reused_tokens for r in replies)
    assert chat.prefill_tokens_saved == saved > 0
    assert chat.prefilled_tokens == sum(r.prompt_tokens for r in replies) - saved
    # what ran through the model: every prefilled prompt token plus each fed-back generated token but the last
    fed_back = sum(r.new_tokens - 1 for r in replies)
    assert sum(embedded) == chat.prefilled_tokens + fed_back
    assert chat.cache_bytes() == chat.cache.nbytes() > 0


def _prefill_logits(model, processor, messages):
    """Next-token logits [vocab] of a fresh, uncached prefill of the whole conversation (the oracle of a turn)."""
    full = processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model(**full, use_cache=False, logits_to_keep=1).logits[0, -1]


def test_cache_reuse_through_generate_only_with_a_peft_model(model_and_processor, videos_dir):
    """The chat reaches the model only through `generate()` (the model continues the positions and encodes the new
    clip itself): a LoRA-wrapped model, whose `model.model` is PEFT's LoraModel without `get_rope_index` or
    `rope_deltas`, gives every turn the logits of a full re-prefill, a new clip in turn 2 included (main reached into
    `model.model.get_rope_index` and set `model.model.rope_deltas`)."""
    peft = pytest.importorskip("peft")
    model, processor = model_and_processor
    lora = peft.LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj", init_lora_weights=False)
    wrapped = peft.get_peft_model(copy.deepcopy(model), lora).eval()
    assert not hasattr(wrapped.model, "get_rope_index")
    video = str(videos_dir / "snow_dog.mp4")
    chat = LatentCacheChat(wrapped, processor)
    messages = [{"role": "user", "content": [{"type": "video", "video": video, **TINY, "min_pixels": TINY["max_pixels"]},
                                             {"type": "text", "text": "What happens?"}]}]  # fmt: skip
    for turn in range(2):
        reply = chat.respond(messages, max_new_tokens=3)
        torch.testing.assert_close(reply.logits[0], _prefill_logits(wrapped, processor, messages), rtol=1e-4, atol=1e-4)
        clip = {"type": "video", "video": video, "video_start": 2.0, "video_end": 6.0, "fps": 1.0, "max_frames": 4,
                "min_pixels": 16 * 1024, "max_pixels": 16 * 1024}  # fmt: skip
        messages += [{"role": "assistant", "content": reply.text},
                     {"role": "user", "content": [clip, {"type": "text", "text": "And here?"}]}]  # fmt: skip
    assert reply.reused_tokens > 0


def test_each_item_is_processed_once_per_conversation(model_and_processor, videos_dir, cut_clip, monkeypatch):
    """Five turns over one clip, a tool clip and an image added on the way, a side chat between turns (it moves the
    model's `rope_deltas`): every turn's token ids are those of a fresh `apply_chat_template` of the whole
    conversation and its logits those of a fresh prefill, yet each item is patchified once (counted on the real
    processor) and the vision tower sees each item's pixel rows once (main re-processed every item every turn)."""
    model, processor = model_and_processor
    video = str(videos_dir / "snow_dog.mp4")
    patchified = []
    for part in (processor.image_processor, processor.video_processor):
        monkeypatch.setattr(part, "patch_writer", lambda writer=part.patch_writer: patchified.append(1) or writer())
    encoded_rows = []
    hook = model.model.visual.register_forward_hook(lambda m, args, out: encoded_rows.append(int(args[0].shape[0])))
    chat = LatentCacheChat(model, processor)
    coarse = {"type": "video", "video": video, **TINY, "min_pixels": TINY["max_pixels"]}
    clip = {"type": "video", "video": str(cut_clip), "video_start": 2.0, "video_end": 6.0, "fps": 1.0, "max_frames": 4,
            "min_pixels": 16 * 1024, "max_pixels": 16 * 1024}  # fmt: skip
    image = Image.fromarray(_frames(videos_dir / "pole_vault.mp4", 1)[0])
    messages = [{"role": "user", "content": [coarse, {"type": "text", "text": "What happens?"}]}]
    rows = []
    try:
        for turn in range(5):
            reply = chat.respond(messages, max_new_tokens=3)
            by_chat = len(patchified)
            full = processor.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
            ids = full["input_ids"][0].tolist()
            assert chat.cached_ids[: len(ids)] == ids and reply.prompt_tokens == len(ids)
            counted = len(encoded_rows)
            with torch.no_grad():
                reference = model(**full, use_cache=False, logits_to_keep=1).logits[0, -1]
            rows.append(sum(encoded_rows[counted:]))  # the oracle processes and encodes every item
            del encoded_rows[counted:], patchified[by_chat:]
            torch.testing.assert_close(reply.logits[0], reference, rtol=1e-4, atol=1e-4)
            chat.fork().respond([{"role": "user", "content": "Say hi."}], max_new_tokens=2)
            messages.append({"role": "assistant", "content": reply.text})
            if turn == 0:
                messages.append({"role": "tool", "content": [{"type": "text", "text": "clip 2-6 s."}, clip]})
            elif turn == 2:
                messages.append({"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "And this?"}]})
            else:
                messages.append({"role": "tool", "content": f"note {turn} saved."})
    finally:
        hook.remove()
    assert rows[0] < rows[1] < rows[3]  # the clip, then the image, entered the conversation
    assert len(patchified) == 3  # the coarse view, the clip, the image: once each
    assert sum(encoded_rows) == rows[-1]  # the chat's vision tower ran each item's rows once


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_interrupted_turn_leaves_the_cache_whole(model_and_processor, videos_dir, error, stage):
    """An error or Ctrl-C raised inside a decoder layer part-way through a turn (mid-prefill, or while generate()
    decodes) crops the cache back to the turn's start: every layer the same length, the next turn equal to a full
    re-prefill, and a side chat (fork) still answers."""
    model, processor = model_and_processor
    video = str(videos_dir / "snow_dog.mp4")
    chat = LatentCacheChat(model, processor)
    messages = [{"role": "user", "content": [{"type": "video", "video": video, **TINY, "min_pixels": TINY["max_pixels"]},
                                             {"type": "text", "text": "What happens?"}]}]  # fmt: skip
    first = chat.respond(messages, max_new_tokens=3)
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then, in detail?"}]
    held = chat.cache_tokens()
    layers = model.model.language_model.layers
    calls = []

    def fail_once(module, args, output):
        # the prefill of the new text runs several tokens at once; generate() then feeds one token a step
        tokens = args[0].shape[1]
        if not calls and (tokens > 1 if stage == "prefill" else tokens == 1 and chat.cache.layers[0].get_seq_length() > held + 2):
            calls.append(tokens)
            raise error("stopped mid-turn")

    hook = layers[len(layers) // 2].register_forward_hook(fail_once)
    try:
        with pytest.raises(error):
            chat.respond(messages, max_new_tokens=4)
    finally:
        hook.remove()
    assert calls, "the hook never fired"
    lengths = {int(layer.get_seq_length()) for layer in chat.cache.layers}
    assert lengths == {len(chat.cached_ids)} and len(chat.cached_ids) <= held
    reply = chat.respond(messages, max_new_tokens=2)
    torch.testing.assert_close(reply.logits[0], _prefill_logits(model, processor, messages), rtol=1e-4, atol=1e-4)
    assert reply.reused_tokens > 0
    side = chat.fork().respond([{"role": "user", "content": "Say hi."}], max_new_tokens=2)
    assert side.new_tokens > 0


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------
def test_loop_runs_tools_in_order_and_feeds_results_back(model_and_processor, cut_clip):
    _, processor = model_and_processor
    script = [
        "Let me look. " + _call("segment") + _call("inspect_clip", start_s=3, end_s=6, fps=1, max_pixels=16384),
        '<tool_call>{"name": "segment", </tool_call>' + _call("zoom", level=2) + _call("inspect_clip", start_s=7, end_s=9.5),
        "<|video_pad|>" + _call("note", text="shot 2 (3-6 s) shows a gym<|image_pad|>") + _call("search_notes", query="gym")
        + _call("other_view"),
        "<think>enough evidence</think>The cut to the gym is at 3.0 s.",
    ]
    stand_in = ScriptedStandInModel(processor, script)
    agent = _agent(stand_in, cut_clip, budget=AgentBudget(max_steps=6))

    def other_view() -> ToolResult:
        """A user tool returning a clip that does not exist."""
        return ToolResult("here", videos=[{"type": "video", "video": str(cut_clip) + ".missing"}])

    agent.tools.register(other_view)  # the registry is the extension point
    assert agent.tools.names()[-1] == "other_view"
    result = agent.run("When does the scene change?")
    assert (result.answer, result.steps, result.stop_reason) == ("The cut to the gym is at 3.0 s.", 4, "answer")
    tools = [(e["name"], e["error"]) for e in result.events if e["role"] == "tool"]
    assert tools == [("segment", False), ("inspect_clip", False), (None, True), ("zoom", True),
                     ("inspect_clip", True), ("note", False), ("search_notes", False), ("other_view", True)]  # fmt: skip
    # results enter the context the model sees next, in order, clips as video items
    second = stand_in.seen[1]
    assert second[-2]["role"] == "tool" and second[-2]["content"].startswith("3 shots: shot 1: 0.00-3.00 s")
    assert second[-1]["content"][0]["text"].startswith("clip 3.0-6.0 s: 4 frames at 1 fps")
    assert second[-1]["content"][1]["video_start"] == 3.0
    third = [m["content"] for m in stand_in.seen[2][-3:]]
    assert "not valid JSON" in third[0] and "unknown tool 'zoom'" in third[1] and "past the end" in third[2]
    assert stand_in.seen[3][-2]["content"] == "note 1: shot 2 (3-6 s) shows a gym"  # typed placeholders removed
    assert "<|video_pad|>" not in stand_in.seen[3][-4]["content"]
    assert stand_in.seen[3][-1]["content"].startswith("error: other_view returned a video that cannot be decoded")
    rendered = processor.apply_chat_template(stand_in.seen[1], tools=agent.tools.schemas(), tokenize=False)
    assert "<tool_response>\n3 shots:" in rendered and rendered.count("<|video_pad|>") == 2


def test_loop_ends_within_step_and_token_budgets(model_and_processor, videos_dir):
    _, processor = model_and_processor
    stand_in = ScriptedStandInModel(processor, [_call("segment")] * 10)
    result = _agent(stand_in, videos_dir / "snow_dog.mp4", budget=AgentBudget(max_steps=3)).run("What happens?")
    assert (result.steps, result.stop_reason, len(stand_in.seen)) == (3, "step budget", 3)
    assert stand_in.seen[2][-1] == {"role": "user", "content": FINAL_STEP_PROMPT}
    many = ScriptedStandInModel(processor, [_call("note", text="x") * 1 + _call("segment") * 5, "done"])
    result = _agent(many, videos_dir / "snow_dog.mp4", budget=AgentBudget(max_tool_calls=2)).run("q")
    assert [e["error"] for e in result.events if e["role"] == "tool"] == [False, False] + [True] * 4

    model, _ = model_and_processor
    chat = LatentCacheChat(model, processor)
    result = _agent(chat, videos_dir / "snow_dog.mp4", budget=AgentBudget(max_context_tokens=50)).run("q")
    assert (result.steps, result.stop_reason, chat.prefilled_tokens) == (0, "token budget", 0)
    assert "the context budget is 50 tokens" in result.events[0]["text"]


def test_example_small_checkpoint_prints_and_writes_transcript(small_checkpoint, tmp_path):
    """examples/video_agent.py (the console script's main) on a real clip with the small checkpoint."""
    out = tmp_path / "run.json"
    done = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "examples" / "video_agent.py"), "--model", str(small_checkpoint),
            "--video", str(DEMO_VIDEO), "--question", "What is the dog doing?", "--max-steps", "2",
            "--max-new-tokens", "6", "--coarse-frames", "4", "--coarse-max-pixels", "16384", "--dtype", "float32",
            "--transcript", str(out),
        ],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    data = json.loads(out.read_text())
    assert 1 <= data["steps"] <= 2 and data["stop_reason"] in ("answer", "step budget")
    assert lines[0].startswith("[step 1] assistant (")
    assert f"answer: {' '.join(data['answer'].split())}" in lines
    assert f"steps: {data['steps']}" in lines and f"prefill tokens saved: {data['prefill_tokens_saved']}" in lines
    cache_line = next(line for line in lines if line.startswith("cache bytes: "))
    assert re.fullmatch(rf"cache bytes: {data['cache_bytes']} \({data['cache_tokens']} tokens, [\d,]+ bytes/token\)", cache_line)
    assert data["cache_bytes"] > 0 and data["messages"][1]["content"][0]["video"] == str(DEMO_VIDEO)
    assert sum(e["new_tokens"] for e in data["events"] if e["role"] == "assistant") <= 2 * 6
    assert not list(tmp_path.glob(".run.json.*"))  # the temp file was renamed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-steps", "0"], "error: --max-steps must be at least 1, got 0"),
        (["--video", "missing.mp4"], "error: --video 'missing.mp4': no such file"),
        (["--transcript", "/no/such/dir/t.json"], "error: --transcript '/no/such/dir/t.json': folder does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message, capsys, videos_dir):
    base = {"--model": "unused", "--video": str(videos_dir / "snow_dog.mp4"), "--question": "q"}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    with pytest.raises(SystemExit) as exit_info:
        agent_main([x for pair in base.items() for x in pair])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_cli_undecodable_video_exits_2(small_checkpoint, capsys, videos_dir):
    with pytest.raises(SystemExit) as exit_info:
        agent_main(["--model", str(small_checkpoint), "--video", str(videos_dir / "corrupted.mp4"), "--question", "q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --video") and "corrupted.mp4" in err[0]
