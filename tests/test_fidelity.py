"""Fidelity to transformers' own Qwen3-VL where M²LA changes nothing (issue 4; SPEC §5.4, §6).

The oracle is `transformers.Qwen3VLForConditionalGeneration` with the small test widths, its weights randomised at
non-trivial scales and copied by key name into our small model (every key outside `self_attn`, SPEC §3), all in fp32.

The attention itself cannot be made equal: Qwen3-VL normalises q and k per head (`q_norm`/`k_norm`, RMSNorm before
RoPE) and M²LA has no such norm, so no M²LA weights reproduce it, not even at full rank (SPEC §9.4; the converter
measures that error in tests/test_convert.py). The decoder test therefore runs *the same function* as attention in
both models: the oracle's own GQA attention of that layer, fed each model's hidden states and each model's MRoPE
cos/sin, under one shared causal + padding mask. Everything else (embedding, placeholder injection, MRoPE, DeepStack
addition, norms, MLPs, LM head) is each model's own code.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_VIDEO
from PIL import Image
from safetensors.torch import load_file
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from internvideo3.convert.export import load_processor
from internvideo3.convert.small_checkpoint import SMALL_TEXT_CONFIG, SMALL_VISION_CONFIG, small_model
from processing_internvideo3 import load_video

IMAGE, VIDEO, VISION_START, VISION_END, PAD = 151655, 151656, 151652, 151653, 151643
ROPE_THETA = 10_000.0  # the 8B value (5e6) leaves most of the 8 small frequencies unrotated at these positions
# The vision tower is transformers' own class and the rest runs the same operations in the same order, so everything
# compared below is bit-exact (torch.equal) on every supported transformers.
# transformers >= 5 (the get_rope_index rewrite) takes token types; 4.57 finds placeholders itself.
ORACLE_TAKES_TOKEN_TYPES = "mm_token_type_ids" in inspect.signature(
    Qwen3VLForConditionalGeneration.forward
).parameters


def oracle_config() -> Qwen3VLConfig:
    """Qwen3-VL with our small widths: one GQA head width = our RoPE width, so both rotaries give [B, S, 16]."""
    t = SMALL_TEXT_CONFIG
    assert t["head_dim"] == t["qk_rope_head_dim"], "the shared attention needs equal RoPE widths"
    text = dict(
        hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"], num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"], num_key_value_heads=2, head_dim=t["head_dim"],
        vocab_size=151936, rope_theta=ROPE_THETA, attention_bias=True,
        rope_scaling=dict(rope_type="default", mrope_section=list(t["mrope_section"]), mrope_interleaved=True),
    )  # fmt: skip
    return Qwen3VLConfig(text_config=text, vision_config=dict(SMALL_VISION_CONFIG), tie_word_embeddings=False)


@pytest.fixture(scope="module")
def models():
    """(ours, oracle): every non-attention tensor equal, at scales where each component matters."""
    torch.manual_seed(1)
    oracle = Qwen3VLForConditionalGeneration(oracle_config()).float().eval()
    oracle.config.text_config._attn_implementation = "eager"  # plain additive mask, same code on every version
    with torch.no_grad():
        for name, p in oracle.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(0.0, 0.1)
            elif name.endswith(("embed_tokens.weight", "pos_embed.weight")):
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, p[0].numel() ** -0.5)
    ours = small_model(seed=0, rope_theta=ROPE_THETA).float().eval()
    theirs = {k: v for k, v in oracle.state_dict().items() if ".self_attn." not in k}
    mine = {k for k in ours.state_dict() if ".self_attn." not in k}
    assert set(theirs) == mine, f"key names differ: {sorted(set(theirs) ^ mine)[:10]}"
    missing, unexpected = ours.load_state_dict(theirs, strict=False)
    assert not unexpected and all(".self_attn." in k for k in missing)
    return ours, oracle


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def equal(mine: torch.Tensor, ref: torch.Tensor) -> bool:
    assert mine.shape == ref.shape, (mine.shape, ref.shape)
    return torch.equal(mine, ref)


def oracle_vision(oracle, pixels, grid):
    """(merged [N/4, D], deepstack list) from the oracle's vision tower: 4.57 returns a tuple, 5.x an output object."""
    out = oracle.model.visual(pixels, grid_thw=grid)
    if isinstance(out, tuple):
        return out[0], list(out[1])
    return out.pooler_output, list(out.deepstack_features)


# ----------------------------------------------------------------------------------------------------------------------
# Vision tower, merger, DeepStack (SPEC §6)
# ----------------------------------------------------------------------------------------------------------------------

GRIDS = {
    "image_odd_merged_grid": [[1, 6, 10]],  # 3 x 5 merged tokens
    "image_beyond_48x48_pos_grid": [[1, 52, 6]],  # learned positions upsampled past their 48 x 48 grid
    "two_images": [[1, 2, 2], [1, 8, 14]],
    "video_t3": [[3, 10, 6]],
    "two_videos": [[2, 4, 6], [3, 6, 2]],
}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_vision_tower_merger_and_deepstack_match_qwen3_vl(models, grid):
    ours, oracle = models
    grid = torch.tensor(grid)
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mine = ours.model.visual(pixels, grid)
        merged, deepstack = oracle_vision(oracle, pixels, grid)
    assert len(mine.deepstack_features) == len(deepstack) == len(SMALL_VISION_CONFIG["deepstack_visual_indexes"])
    pairs = [(mine.pooler_output, merged), *zip(mine.deepstack_features, deepstack)]
    print(f"vision {grid.tolist()}: max |diff| merger {max_diff(*pairs[0]):.2e} (|ref| <= {merged.abs().max():.2f}), "
          f"deepstack {max(max_diff(a, b) for a, b in pairs[1:]):.2e}")
    assert all(equal(a, b) for a, b in pairs)
    assert float(merged.abs().mean()) > 0.1, "features must be non-trivial for the comparison to mean anything"


# ----------------------------------------------------------------------------------------------------------------------
# A left-padded batch mixing text, images and videos (each video frame group its own vision_start/end segment)
# ----------------------------------------------------------------------------------------------------------------------


def image_tokens(h, w):
    return [VISION_START] + [IMAGE] * (h * w // 4) + [VISION_END]


def video_tokens(t, h, w):
    stamp = [27, 15, 13, 20, 6086, 29]  # "<0.5 seconds>"-like text before each frame group, as the processor writes
    return [tok for _ in range(t) for tok in stamp + [VISION_START] + [VIDEO] * (h * w // 4) + [VISION_END]]


def mixed_batch(with_pixels: bool = True) -> dict:
    """Three rows: image + video, video + image, text only; left padding; grids in prompt order."""
    images, videos = [[1, 4, 6], [1, 6, 10]], [[2, 4, 4], [3, 6, 2]]
    rows = [
        [100, 101, 102] + image_tokens(4, 6) + [103, 104] + video_tokens(2, 4, 4) + [105, 106, 107],
        [200, 201, 202, 203, 204] + video_tokens(3, 6, 2) + [205] + image_tokens(6, 10) + [206, 207],
        [300, 301, 302, 303],
    ]
    width = max(map(len, rows)) + 1
    input_ids = torch.full((len(rows), width), PAD)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row) :] = torch.tensor(row)
        attention_mask[b, width - len(row) :] = 1
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, image_grid_thw=torch.tensor(images),
                 video_grid_thw=torch.tensor(videos))  # fmt: skip
    if with_pixels:
        g = torch.Generator().manual_seed(3)
        batch["pixel_values"] = torch.randn(int(batch["image_grid_thw"].prod(-1).sum()), 1536, generator=g)
        batch["pixel_values_videos"] = torch.randn(int(batch["video_grid_thw"].prod(-1).sum()), 1536, generator=g)
    return batch


def oracle_inputs(batch: dict) -> dict:
    """The oracle's inputs: transformers >= 5 also needs `mm_token_type_ids` (text 0, image 1, video 2)."""
    batch = dict(batch)
    if ORACLE_TAKES_TOKEN_TYPES:
        ids = batch["input_ids"]
        batch["mm_token_type_ids"] = ((ids == IMAGE).int() + 2 * (ids == VIDEO).int()) * batch["attention_mask"].int()
    return batch


# ----------------------------------------------------------------------------------------------------------------------
# 3-D position ids and rope_deltas (SPEC §5.4)
# ----------------------------------------------------------------------------------------------------------------------


def test_position_ids_and_rope_deltas_match_qwen3_vl(models):
    """Positions of every real token are identical. Padding and `rope_deltas` follow transformers 4.57's convention
    (pads at position 1, delta = max position + 1 - padded length); transformers 5.x puts pads at 0 and measures the
    delta from the unpadded length, i.e. its delta is ours + number of pads. Both give the same decode positions
    (see the generate test below)."""
    ours, oracle = models
    batch = mixed_batch(with_pixels=False)
    mask = batch["attention_mask"]
    grids = {k: batch[k].clone() for k in ("image_grid_thw", "video_grid_thw")}
    position_ids, deltas = ours.model.get_rope_index(batch["input_ids"], attention_mask=mask, **grids)
    extra = {"mm_token_type_ids": oracle_inputs(batch)["mm_token_type_ids"]} if ORACLE_TAKES_TOKEN_TYPES else {}
    ref_ids, ref_deltas = oracle.model.get_rope_index(batch["input_ids"], attention_mask=mask, **grids, **extra)
    valid = mask.bool()
    assert torch.equal(position_ids[:, valid], ref_ids[:, valid])
    assert not torch.equal(position_ids[0], position_ids[1]), "the batch must exercise 3-D (vision) positions"
    pads = mask.shape[1] - mask.sum(1, keepdim=True)
    if ORACLE_TAKES_TOKEN_TYPES:
        assert torch.equal(ref_ids[:, ~valid], torch.zeros_like(ref_ids[:, ~valid]))
        assert torch.equal(position_ids[:, ~valid], torch.ones_like(position_ids[:, ~valid]))
        assert torch.equal(deltas, ref_deltas.to(deltas.dtype) - pads)
    else:
        assert torch.equal(position_ids, ref_ids)
        assert torch.equal(deltas, ref_deltas.to(deltas.dtype))


def record_rotary_positions(model, rotary) -> tuple[list, object]:
    """Record the position ids [3, B, S] every forward hands to `rotary` (ours: arg 0; oracle: arg 1)."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("position_ids", args[-1] if args else None)
        seen.append(ids.expand(3, *ids.shape[-2:]).clone())

    return seen, rotary.register_forward_pre_hook(hook, with_kwargs=True)


def test_generate_uses_qwen3_vl_positions_at_prefill_and_decode(models):
    """The positions the rotary embedding receives during `generate()` (prefill, then 3 decode steps driven by
    rope_deltas) equal the oracle's on every real token, on both rope_deltas conventions."""
    ours, oracle = models
    batch = mixed_batch()
    valid = batch["attention_mask"].bool()
    runs = []
    for model, inputs, rotary in (
        (ours, batch, ours.model.language_model.rotary_emb),
        (oracle, oracle_inputs(batch), oracle.model.language_model.rotary_emb),
    ):
        seen, handle = record_rotary_positions(model, rotary)
        try:
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        finally:
            handle.remove()
        runs.append(seen)
    mine, theirs = runs
    assert len(mine) == len(theirs) == 4
    assert torch.equal(mine[0][:, valid], theirs[0][:, valid])
    for step, (a, b) in enumerate(zip(mine[1:], theirs[1:]), start=1):
        assert torch.equal(a, b), f"decode step {step}: {a[:, :, 0].tolist()} != {b[:, :, 0].tolist()}"
    # the first generated token sits right after the largest prompt position (text after vision: max + 1)
    assert torch.equal(mine[1][0, :, 0], mine[0].amax(dim=(0, 2)) + 1)


# ----------------------------------------------------------------------------------------------------------------------
# Embedding injection, DeepStack addition, the decoder around attention (SPEC §6)
# ----------------------------------------------------------------------------------------------------------------------


def shared_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Additive float mask [B, 1, S, S]: causal and padding; a pad query row sees all keys (its output is unused)."""
    S = attention_mask.shape[1]
    allowed = torch.ones(S, S, dtype=torch.bool).tril()[None] & attention_mask.bool()[:, None, :]
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


def run_with_shared_attention(model, inputs: dict, oracle_layers, mask: torch.Tensor):
    """Forward `model` with each layer's attention replaced by the oracle's attention of that layer under `mask`.

    Returns (logits, rotary cos/sin of layer 0, hidden states entering each layer, hidden states leaving each layer).
    """
    layers = model.model.language_model.layers
    entering, leaving, rotary, handles = [], [], [], []
    for layer, oracle_layer in zip(layers, oracle_layers):
        oracle_attention = type(oracle_layer.self_attn).forward.__get__(oracle_layer.self_attn)

        def attend(hidden_states, position_embeddings=None, *args, _attention=oracle_attention, **kwargs):
            rotary.append(position_embeddings)
            out, _ = _attention(hidden_states=hidden_states, position_embeddings=position_embeddings, attention_mask=mask)
            return out, None  # both attentions return (output, weights)

        layer.self_attn.forward = attend
        handles.append(layer.register_forward_pre_hook(
            lambda m, args, kwargs: entering.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
        ))  # fmt: skip
        handles.append(layer.register_forward_hook(
            # clone: transformers 4.57 adds DeepStack in place into the tensor a layer returned
            lambda m, args, out: leaving.append((out[0] if isinstance(out, tuple) else out).clone())
        ))  # fmt: skip
    try:
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits
    finally:
        for layer in layers:
            del layer.self_attn.forward
        for handle in handles:
            handle.remove()
    return logits, rotary[0], entering, leaving


def test_injection_deepstack_and_decoder_match_qwen3_vl_with_shared_attention(models):
    """With the same attention function in both models, embeddings after placeholder injection, hidden states after
    decoder layers 0-2 (before and after the DeepStack addition), the rotary cos/sin and the logits all agree."""
    ours, oracle = models
    batch = mixed_batch()
    valid = batch["attention_mask"].bool()
    mask = shared_mask(batch["attention_mask"])
    oracle_layers = oracle.model.language_model.layers
    mine = run_with_shared_attention(ours, batch, oracle_layers, mask)
    theirs = run_with_shared_attention(oracle, oracle_inputs(batch), oracle_layers, mask)
    (logits, (cos, sin), entering, leaving), (ref_logits, (ref_cos, ref_sin), ref_entering, ref_leaving) = mine, theirs

    pairs = {
        "rotary cos": (cos[valid], ref_cos[valid]),
        "rotary sin": (sin[valid], ref_sin[valid]),
        "embeddings after injection": (entering[0][valid], ref_entering[0][valid]),
    }
    for i in range(3):  # DeepStack feeds layers 0, 1, 2
        pairs[f"layer {i} output"] = (leaving[i][valid], ref_leaving[i][valid])
        pairs[f"layer {i} output + DeepStack"] = (entering[i + 1][valid], ref_entering[i + 1][valid])
    pairs["logits"] = (logits[valid], ref_logits[valid])
    print("decoder with shared attention, max |diff| (max |ref|):",
          {k: f"{max_diff(a, b):.2e} ({b.abs().max():.1f})" for k, (a, b) in pairs.items()})
    assert all(equal(a, b) for a, b in pairs.values()), [k for k, (a, b) in pairs.items() if not equal(a, b)]

    visual = (batch["input_ids"] == IMAGE) | (batch["input_ids"] == VIDEO)
    added = (entering[1] - leaving[0]).abs().amax(-1)
    assert bool((added[visual] > 0).all()) and float(added[~visual].max()) == 0.0, "DeepStack adds at visual tokens only"
    assert float(logits[valid].std()) > 0.1, "logits must be non-trivial for the comparison to mean anything"


# ----------------------------------------------------------------------------------------------------------------------
# Processor against transformers' Qwen3VLProcessor on the same decoded frames (SPEC §7)
# ----------------------------------------------------------------------------------------------------------------------
# Fixtures written by tests/fixtures/make_qwen3vl_processor_fixtures.py (transformers 5.23.0 + torchvision 0.29.1).

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def reference() -> tuple[dict, dict]:
    record = json.loads((FIXTURES / "qwen3vl_processor.json").read_text())
    return record, load_file(str(FIXTURES / "qwen3vl_processor.safetensors"))


@pytest.fixture(scope="module")
def processor():
    return load_processor()


def clip_path(name: str, videos_dir: Path) -> Path:
    return DEMO_VIDEO if name == DEMO_VIDEO.name else videos_dir / name


@pytest.fixture(scope="module")
def decoded(reference, videos_dir) -> dict:
    """case -> [(frames, metadata)] from our `load_video` with the case's sampling, checked against the frames
    transformers was given (a mismatch means the decoder, not the processor, changed)."""
    record, _ = reference
    out = {}
    for name, case in record["cases"].items():
        settings = case["video_processor"]
        out[name] = []
        for video in case["videos"]:
            frames, meta = load_video(
                clip_path(video["clip"], videos_dir), fps=settings["fps"], max_frames=settings["max_frames"]
            )
            given = np.ascontiguousarray(frames[: meta.num_sampled_frames])
            digest = hashlib.sha256(given.tobytes()).hexdigest()
            assert digest == video["frames_sha256"], f"{video['clip']} decodes differently than when recorded"
            out[name].append((frames, meta))
    return out


def still_image(record: dict) -> Image.Image:
    frames, _ = load_video(DEMO_VIDEO, **record["image"]["load_video"])
    return Image.fromarray(frames[0])


def without_outer_video_wrappers(ids: list[int]) -> list[int]:
    """Drop the `<|vision_start|>`/`<|vision_end|>` that transformers 5.12 to 5.24 (the fixtures' 5.23.0) keep around
    each whole video (they replace only `<|video_pad|>` of the template's triple; 5.25 collapses the triple first): a
    start not followed by a pad, an end right after an end."""
    keep = []
    for i, token in enumerate(ids):
        if token == VISION_START and (i + 1 == len(ids) or ids[i + 1] not in (IMAGE, VIDEO)):
            continue
        if token == VISION_END and i and ids[i - 1] == VISION_END:
            continue
        keep.append(token)
    return keep


def float_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor.float().numpy()).tobytes()).hexdigest()


def restore(uint8: torch.Tensor) -> torch.Tensor:
    """Stored uint8 pixels -> normalised float32 (mean = std = 0.5), the fused form transformers' torchvision path uses."""
    return (uint8.float() - 127.5) / 127.5


def test_frame_sampling_matches_qwen3vl_video_processor(reference, decoded):
    """Our sampled frame indices equal `Qwen3VLVideoProcessor.sample_frames` for every clip (fps, min/max frames)."""
    record, _ = reference
    for name, case in record["cases"].items():
        for video, (frames, meta) in zip(case["videos"], decoded[name]):
            n = meta.num_sampled_frames
            assert meta.frames_indices[:n] == video["sample_indices"], video["clip"]
            assert frames.shape[0] == n + n % 2, "odd counts are padded to whole temporal patches"


@pytest.mark.parametrize("case", ["short_clips", "pole_vault_class_default"])
def test_processor_matches_qwen3vl_processor_on_the_same_frames(processor, reference, decoded, case):
    """pixel_values_videos (bit for bit), video_grid_thw, image outputs and token ids against the fixture.

    Intended differences: transformers 5.12 to 5.24 (the fixtures' 5.23.0) keep 2 extra outer vision_start/end tokens
    per video (we, like <= 5.10 and >= 5.25, never do), and its PIL image path normalises in two steps (rescale, then
    normalise): at most one float32 ulp from our fused (x - 127.5) / 127.5, with identical resized uint8 pixels."""
    record, tensors = reference
    entry = record["cases"][case]
    settings = entry["video_processor"]
    frames, metadata = zip(*decoded[case])
    image = [still_image(record)] if "image_grid_thw" in entry else None
    size = record["image"]["size"]
    out = processor(
        text=[entry["text"]], videos=list(frames), video_metadata=list(metadata), images=image,
        video_budget="total", size=settings["size"],
        image_min_pixels=size["shortest_edge"], image_max_pixels=size["longest_edge"],
    )  # fmt: skip
    assert out["video_grid_thw"].tolist() == entry["video_grid_thw"]
    if f"{case}.pixel_values_videos" in tensors:
        assert max_diff(out["pixel_values_videos"], restore(tensors[f"{case}.pixel_values_videos"])) == 0.0
    assert float_sha256(out["pixel_values_videos"]) == entry["pixel_values_videos_sha256"]

    ids, ref_ids = out["input_ids"][0].tolist(), entry["input_ids"]
    assert len(ref_ids) - len(ids) == 2 * len(frames), "transformers 5.23.0: two outer wrapper tokens per video"
    assert ids == without_outer_video_wrappers(ref_ids)

    if image is not None:
        assert out["image_grid_thw"].tolist() == entry["image_grid_thw"]
        pil = tensors[f"{case}.pixel_values.pil"]
        assert torch.equal((out["pixel_values"] * 127.5 + 127.5).round().to(torch.uint8), pil), "resized pixels differ"
        assert max_diff(out["pixel_values"], restore(pil)) == 0.0
        assert entry["image_normalization_error.pil"] < 1e-7  # transformers' own two-step normalisation


def test_processor_on_file_paths_equals_the_reference(reference, processor, videos_dir):
    """The path users take: our processor decodes the files itself (frames resized while decoding) and still gives
    transformers' pixels, grids and (wrapper-less) token ids."""
    record, _ = reference
    entry = record["cases"]["short_clips"]
    settings = entry["video_processor"]
    out = processor(
        text=[entry["text"]], videos=[str(clip_path(v["clip"], videos_dir)) for v in entry["videos"]],
        images=[still_image(record)], fps=settings["fps"], max_frames=settings["max_frames"], video_budget="total",
        size=settings["size"], image_min_pixels=record["image"]["size"]["shortest_edge"],
        image_max_pixels=record["image"]["size"]["longest_edge"],
    )  # fmt: skip
    assert out["video_grid_thw"].tolist() == entry["video_grid_thw"]
    assert float_sha256(out["pixel_values_videos"]) == entry["pixel_values_videos_sha256"]
    assert out["input_ids"][0].tolist() == without_outer_video_wrappers(entry["input_ids"])


def test_torch_image_backend_matches_qwen2vl_torchvision_image_processor(reference):
    """`image_resize_backend="torch"` reproduces transformers' default (torchvision) image processor bit for bit."""
    record, tensors = reference
    size = record["image"]["size"]
    out = load_processor(image_resize_backend="torch")(
        images=[still_image(record)], image_min_pixels=size["shortest_edge"], image_max_pixels=size["longest_edge"]
    )
    assert out["image_grid_thw"].tolist() == record["cases"]["short_clips"]["image_grid_thw"]
    assert max_diff(out["pixel_values"], restore(tensors["short_clips.pixel_values.torchvision"])) == 0.0


def test_default_budget_differs_from_transformers_class_default_as_documented(processor, reference):
    """transformers' class-default budget (786,432 pixels for the whole clip) shrinks the 145 s pole_vault clip to
    32x64-pixel frames, 290 visual tokens; our default (qwen-vl-utils per-frame budget: at least 128 tokens, 131,072
    pixels, per frame) upsamples its 224x398 frames to 288x512, 145 x 144 = 20,880 tokens. Both are selectable
    (`video_budget`, `size`, `min_pixels`, `max_pixels`, `total_pixels`)."""
    record, _ = reference
    entry = record["cases"]["pole_vault_class_default"]
    (video,) = entry["videos"]
    assert entry["video_processor"]["size"] == {"shortest_edge": 131_072, "longest_edge": 786_432}
    assert entry["video_grid_thw"] == [[145, 2, 4]] and entry["input_ids"].count(VIDEO) == 290
    n, (height, width) = video["decoded_shape"][0], video["decoded_shape"][1:3]
    total = {"video_budget": "total", "size": entry["video_processor"]["size"]}
    assert processor.video_target_size(n, height, width, total) == (32, 64)
    h, w = processor.video_target_size(n, height, width)
    assert processor.video_budget == "per_frame" and h * w >= processor.min_pixels
    assert (h, w) == (288, 512) and 145 * (h // 32) * (w // 32) == 20_880


@pytest.mark.parametrize("getter", ["get_video_features", "get_image_features"])
def test_feature_getters_have_qwen3_vl_api_of_the_installed_transformers(models, getter):
    """Same return type, nesting and values as Qwen3-VL's getter on this transformers (5.x: an output object with
    per-item pooled embeddings and DeepStack tuples, `return_dict=False` a tuple; 4.57: a tuple)."""
    ours, oracle = models
    grid = torch.tensor(GRIDS["two_videos"])
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(3))
    returns_output = not isinstance(oracle.get_video_features(pixels, grid), tuple)
    with torch.no_grad():
        for kwargs in ({}, {"return_dict": False}) if returns_output else ({},):
            mine = getattr(ours, getter)(pixels, grid, **kwargs)
            theirs = getattr(oracle, getter)(pixels, grid, **kwargs)
            assert isinstance(mine, tuple) == isinstance(theirs, tuple)
            if isinstance(theirs, tuple):  # 4.57: (embeds, deepstack); 5.x to_tuple(): (hidden, embeds, deepstack)
                assert len(mine) == len(theirs)
                (mine_embeds, mine_deep), (theirs_embeds, theirs_deep) = mine[-2:], theirs[-2:]
            else:
                assert set(mine.keys()) == set(theirs.keys())
                assert equal(mine.last_hidden_state, theirs.last_hidden_state)
                mine_embeds, mine_deep = mine.pooler_output, mine.deepstack_features
                theirs_embeds, theirs_deep = theirs.pooler_output, theirs.deepstack_features
            assert len(mine_embeds) == len(theirs_embeds) == 2  # one tensor per video
            for a, b in zip(mine_embeds, theirs_embeds):
                assert equal(a, b)
            assert len(mine_deep) == len(theirs_deep)
            for a, b in zip(mine_deep, theirs_deep):
                assert type(a) is type(b)
                for x, y in zip(a, b) if isinstance(b, tuple) else ((a, b),):
                    assert equal(x, y)
