"""Generation patterns beyond one prompt: a multi-turn chat that carries its cache into a turn with a new video or
image, `generate(inputs_embeds=...)`, and `rope_deltas` that never leak from one call into the next.

Oracle: a fresh prefill (or a fresh `generate()`) over the whole conversation, fp32, atol 1e-4. Inputs come from the
real processor on real clips (tests/data/videos) with the real tokenizer; the model is the small random one.
"""

from __future__ import annotations


import av
import pytest
import torch

import modeling_internvideo3 as modeling
from internvideo3.convert.export import load_processor
from modeling_internvideo3 import InternVideo3LatentCache

# small clips: few merged patches a frame group, so the vision tower is cheap
VIDEO_KWARGS = dict(max_frames=4, fps=2.0, max_pixels=128 * 128, min_pixels=64 * 64)
TURN_1 = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens here?<|im_end|>\n<|im_start|>assistant\n"
)
NEW_USER_TURN = {
    "video": "<|vision_start|><|video_pad|><|vision_end|>And in this clip?",
    "image": "<|vision_start|><|image_pad|><|vision_end|>And in this picture?",
    "text": "Say it in one word.",
}
GENERATE = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)


@pytest.fixture(scope="module")
def processor():
    return load_processor()


def first_frame(path):
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_image()


def turn_inputs(processor, videos_dir, new: str):
    """Turn 1 (a real clip) and, given turn 1's generated ids, the whole turn-2 conversation as the processor gives
    it: the turn-1 ids, the end of the assistant reply, a new user message with `new` (a clip, a picture or text),
    and the pixels and grids of ALL the conversation's items (turn 1's first; `only_new=True`: the new item's only)."""
    turn_1 = processor(text=[TURN_1], videos=[str(videos_dir / "pole_vault.mp4")], **VIDEO_KWARGS)
    suffix = "<|im_end|>\n<|im_start|>user\n" + NEW_USER_TURN[new] + "<|im_end|>\n<|im_start|>assistant\n"
    items = {}
    if new == "video":
        items = dict(videos=[str(videos_dir / "snow_dog.mp4")], **VIDEO_KWARGS)
    elif new == "image":
        image = first_frame(videos_dir / "snow_dog.mp4")
        items = dict(images=[image], image_min_pixels=32 * 32, image_max_pixels=64 * 64)
    suffix_inputs = processor(text=[suffix], **items)

    def turn_2(sequences: torch.Tensor, only_new: bool = False) -> dict:
        ids = torch.cat([sequences, suffix_inputs["input_ids"]], dim=1)
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
        for pixels, grid in (("pixel_values_videos", "video_grid_thw"), ("pixel_values", "image_grid_thw")):
            parts = [x for x in ((suffix_inputs,) if only_new else (turn_1, suffix_inputs)) if grid in x]
            if parts:
                inputs[pixels] = torch.cat([x[pixels] for x in parts])
                inputs[grid] = torch.cat([x[grid] for x in parts])
        return inputs

    return dict(turn_1), turn_2


@pytest.mark.parametrize("user_cache", [False, True], ids=["default_cache", "user_cache"])
@pytest.mark.parametrize("new", ["video", "image", "text"])
def test_multi_turn_with_carried_cache_matches_fresh_conversation(model, processor, videos_dir, new, user_cache):
    """Turn 2 continues turn 1's cache with a new clip, picture or text: the new items are encoded, their MRoPE
    positions continue the cached ones, and the next-token logits, generated tokens and scores equal a fresh
    `generate()` over the whole conversation (and a fresh forward's last logits)."""
    turn_1, turn_2 = turn_inputs(processor, videos_dir, new)
    cache_kwargs = {"cache": InternVideo3LatentCache(model.config)} if user_cache else {}
    with torch.no_grad():
        first = model.generate(**turn_1, **cache_kwargs, **GENERATE)
        cache = first[modeling.CACHE_NAME]
        assert isinstance(cache, InternVideo3LatentCache)
        if user_cache:
            assert cache is cache_kwargs["cache"]
        inputs = turn_2(first.sequences)
        assert cache.get_seq_length() == first.sequences.shape[1] - 1  # the last generated token is not cached yet

        encoded = []
        hook = model.model.visual.register_forward_hook(lambda m, args, out: encoded.append(args[1].clone()))
        continued = model.generate(**inputs, cache=cache, **GENERATE)
        hook.remove()
        continued_deltas = model.model.rope_deltas.clone()
        fresh = model.generate(**inputs, **GENERATE)
        prefill = model(**inputs, use_cache=False).logits[:, -1]

    torch.testing.assert_close(continued.logits[0], prefill, atol=1e-4, rtol=1e-4)
    assert torch.equal(continued.sequences, fresh.sequences)
    for step_continued, step_fresh in zip(continued.logits, fresh.logits):
        torch.testing.assert_close(step_continued, step_fresh, atol=1e-4, rtol=1e-4)
    _, full_deltas = model.model.get_rope_index(
        inputs["input_ids"], inputs.get("image_grid_thw"), inputs.get("video_grid_thw")
    )
    assert torch.equal(continued_deltas, full_deltas), "rope_deltas must be the whole conversation's"
    new_grid = {"video": inputs.get("video_grid_thw"), "image": inputs.get("image_grid_thw")}.get(new)
    if new == "text":
        assert encoded == [], "turn 2 has no new item: nothing to encode"
    else:
        assert len(encoded) == 1 and torch.equal(encoded[0], new_grid[-1:]), "only the new item is encoded"


def test_multi_turn_with_only_the_new_items_pixels(model, processor, videos_dir):
    """Turn 2 given the pixels and grid of its new clip only (not the whole conversation's): the same logits as a fresh
    prefill of the whole conversation (positions continue from the cached `rope_deltas`)."""
    turn_1, turn_2 = turn_inputs(processor, videos_dir, "video")
    with torch.no_grad():
        first = model.generate(**turn_1, **GENERATE)
        everything, only_new = turn_2(first.sequences), turn_2(first.sequences, only_new=True)
        continued = model.generate(**only_new, cache=first[modeling.CACHE_NAME], **GENERATE)
        fresh = model.generate(**everything, **GENERATE)
    assert torch.equal(continued.sequences, fresh.sequences)
    for step_continued, step_fresh in zip(continued.logits, fresh.logits):
        torch.testing.assert_close(step_continued, step_fresh, atol=1e-4, rtol=1e-4)


def test_batched_multi_turn_with_left_padding(model, processor, videos_dir):
    """Two left-padded conversations continue their cache with a new clip each: every sample's own items are told
    apart (grid rows in batch order, each sample's cached items first) and the logits equal a fresh generate()."""
    clips = [str(videos_dir / name) for name in ("pole_vault.mp4", "av1_640x360.mkv")]
    texts = [TURN_1, TURN_1.replace("What happens here?", "Describe the scene in detail, please.")]
    turn_1 = dict(processor(text=texts, videos=clips, **VIDEO_KWARGS))
    assert not bool(turn_1["attention_mask"].all()), "the batch must be left-padded"
    suffix = "<|im_end|>\n<|im_start|>user\n" + NEW_USER_TURN["video"] + "<|im_end|>\n<|im_start|>assistant\n"
    new_clips = [str(videos_dir / name) for name in ("snow_dog.mp4", "hevc_128x128.mp4")]
    new = processor(text=[suffix, suffix], videos=new_clips, **VIDEO_KWARGS)
    assert not bool(new["attention_mask"].all()), "the new clips differ in size: turn 2 is padded in the middle"
    with torch.no_grad():
        first = model.generate(**turn_1, **GENERATE)
        ids = torch.cat([first.sequences, new["input_ids"]], dim=1)
        mask = torch.cat([turn_1["attention_mask"], torch.ones_like(first.sequences[:, turn_1["input_ids"].shape[1] :]),
                          new["attention_mask"]], dim=1)  # fmt: skip
        old_grid, new_grid = turn_1["video_grid_thw"], new["video_grid_thw"]
        old_px = turn_1["pixel_values_videos"].split(old_grid.prod(-1).tolist())
        new_px = new["pixel_values_videos"].split(new_grid.prod(-1).tolist())
        inputs = dict(
            input_ids=ids, attention_mask=mask,  # the processor's order: sample 0's items, then sample 1's
            pixel_values_videos=torch.cat([old_px[0], new_px[0], old_px[1], new_px[1]]),
            video_grid_thw=torch.stack([old_grid[0], new_grid[0], old_grid[1], new_grid[1]]),
        )  # fmt: skip
        continued = model.generate(**inputs, cache=first[modeling.CACHE_NAME], **GENERATE)
        fresh = model.generate(**inputs, **GENERATE)
    assert torch.equal(continued.sequences, fresh.sequences)
    for step_continued, step_fresh in zip(continued.logits, fresh.logits):
        torch.testing.assert_close(step_continued, step_fresh, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_video", [False, True], ids=["text", "video"])
def test_generate_from_inputs_embeds_gives_the_input_ids_tokens(model, processor, videos_dir, with_video):
    """`generate(inputs_embeds=...)` (with and without `pixel_values_videos`) gives the tokens and scores of
    `generate(input_ids=...)`; the video placeholders are found from the embeddings."""
    if with_video:
        inputs = dict(processor(text=[TURN_1], videos=[str(videos_dir / "pole_vault.mp4")], **VIDEO_KWARGS))
    else:
        inputs = dict(processor(text=["<|im_start|>user\nWhat is a pole vault?<|im_end|>\n<|im_start|>assistant\n"]))
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        reference = model.generate(input_ids=ids, **inputs, **GENERATE)
        embeds = model.get_input_embeddings()(ids)
        out = model.generate(inputs_embeds=embeds, **inputs, **GENERATE)
    new_tokens = reference.sequences[:, ids.shape[1] :]
    assert torch.equal(out.sequences[:, -new_tokens.shape[1] :], new_tokens)
    for step_embeds, step_ids in zip(out.logits, reference.logits):
        torch.testing.assert_close(step_embeds, step_ids, atol=1e-4, rtol=1e-4)


def test_inputs_embeds_prefill_sets_its_own_rope_deltas(model, processor, videos_dir):
    """A forward with a video (a large MRoPE delta) and then an `inputs_embeds` text prefill + decode step: the decode
    uses the text prefill's delta, not the video's (every prefill sets it; nothing carries between calls)."""
    video = dict(processor(text=[TURN_1], videos=[str(videos_dir / "pole_vault.mp4")], **VIDEO_KWARGS))
    ids = torch.tensor([[101, 102, 103, 104, 105, 106]])
    with torch.no_grad():
        reference = model(input_ids=ids, use_cache=False).logits[:, -1]
        model(**video, use_cache=False)
        assert int(model.model.rope_deltas.abs().max()) > 0
        cache = InternVideo3LatentCache(model.config)
        model(inputs_embeds=model.get_input_embeddings()(ids[:, :-1]), cache=cache, use_cache=True)
        assert model.model.rope_deltas.tolist() == [[0]]
        step = model(input_ids=ids[:, -1:], cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, reference, atol=1e-4, rtol=1e-4)
