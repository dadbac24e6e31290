"""Model correctness: absorbed decode vs expanded attention, the latent cache layout, the 8B layout, generation."""

from __future__ import annotations


import pytest
import torch

import modeling_internvideo3 as modeling
from configuration_internvideo3 import InternVideo3Config
from modeling_internvideo3 import InternVideo3ForConditionalGeneration, InternVideo3LatentCache

VISION_START, VISION_END, VIDEO_PAD, PAD = 151652, 151653, 151656, 151643


def video_batch(seed: int = 0):
    """Two left-padded prompts, each text + a 2-group video (grid t=2, h=w=4 patches -> 4 tokens a group) + text."""
    g = torch.Generator().manual_seed(seed)
    group = [VISION_START] + [VIDEO_PAD] * 4 + [VISION_END]
    rows = [
        [11, 12, 13] + [40] + group + [41] + group + [14, 15],
        [21, 22, 23, 24, 25, 26] + [40] + group + [41] + group + [27],
    ]
    width = max(map(len, rows)) + 2
    input_ids = torch.full((2, width), PAD)
    attention_mask = torch.zeros(2, width, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row) :] = torch.tensor(row)
        attention_mask[b, width - len(row) :] = 1
    grid = torch.tensor([[2, 4, 4], [2, 4, 4]])
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 16 * 16, generator=g)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixels, video_grid_thw=grid)


def text_batch():
    input_ids = torch.tensor([[PAD, PAD, PAD, 101, 102, 103, 104], [201, 202, 203, 204, 205, 206, 207]])
    attention_mask = (input_ids != PAD).long()
    return dict(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("make_batch", [text_batch, video_batch], ids=["text", "video"])
def test_absorbed_decode_matches_full_forward(model, make_batch, attn_implementation, monkeypatch):
    """Step-by-step decoding with the latent cache (absorbed) equals one expanded forward over the same tokens."""
    model.config.text_config._attn_implementation = attn_implementation
    batch = make_batch()
    continuation = torch.tensor([[7, 8, 9, 10, 11], [17, 18, 19, 20, 21]])
    full_ids = torch.cat([batch["input_ids"], continuation], dim=1)
    full_mask = torch.cat([batch["attention_mask"], torch.ones_like(continuation)], dim=1)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        reference = model(input_ids=full_ids, attention_mask=full_mask, use_cache=False, **extra).logits

        absorbed_calls, expansions = [], []
        real_decode = modeling.latent_attention_decode
        monkeypatch.setattr(
            modeling, "latent_attention_decode", lambda *a, **k: absorbed_calls.append(1) or real_decode(*a, **k)
        )
        hooks = [
            layer.self_attn.kv_b_proj.register_forward_hook(lambda m, i, o: expansions.append(i[0].shape[1]))
            for layer in model.model.language_model.layers
        ]
        cache = InternVideo3LatentCache(model.config)
        prompt_len = batch["input_ids"].shape[1]
        out = model(**batch, cache=cache, use_cache=True)
        steps = [out.logits]
        expansions.clear()
        for i in range(continuation.shape[1]):
            out = model(
                input_ids=continuation[:, i : i + 1],
                attention_mask=full_mask[:, : prompt_len + i + 1],
                cache=cache,
                use_cache=True,
            )
            steps.append(out.logits)
        for hook in hooks:
            hook.remove()
    stepped = torch.cat(steps, dim=1)
    valid = full_mask.bool()
    torch.testing.assert_close(stepped[valid], reference[valid], atol=1e-4, rtol=1e-4)
    n_layers = model.config.text_config.num_hidden_layers
    assert len(absorbed_calls) == continuation.shape[1] * n_layers, "decode steps must use the absorbed path"
    assert expansions == [], "decode must never re-expand the cached latents through kv_b_proj"
    assert cache.get_seq_length() == full_ids.shape[1]


def test_latent_cache_holds_latent_plus_rope_key_only(model):
    """Sum of the bytes of every tensor the cache holds / (tokens · layers) = (r + d_r) · element size."""
    text = model.config.text_config
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        with torch.no_grad():
            out = m(**text_batch(), use_cache=True)
        cache = out[modeling.CACHE_NAME]
        assert isinstance(cache, InternVideo3LatentCache)
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        total_bytes = sum(t.numel() * t.element_size() for t in tensors)
        batch, tokens = 2, text_batch()["input_ids"].shape[1]
        element = torch.finfo(dtype).bits // 8
        per_token_per_layer = total_bytes / (batch * tokens * text.num_hidden_layers * element)
        assert per_token_per_layer == text.kv_lora_rank + text.qk_rope_head_dim
        assert cache.bytes_per_token() == text.num_hidden_layers * (text.kv_lora_rank + text.qk_rope_head_dim) * element
        assert cache.values_per_token_per_layer() == [text.kv_lora_rank + text.qk_rope_head_dim] * text.num_hidden_layers


def test_cache_crop_reorder_and_select(model):
    with torch.no_grad():
        cache = model(**text_batch(), use_cache=True)[modeling.CACHE_NAME]
    first_row = cache.layers[0].keys[0].clone()
    cache.reorder_cache(torch.tensor([1, 0]))
    torch.testing.assert_close(cache.layers[0].keys[1], first_row)
    cache.crop(4 - cache.get_seq_length())  # negative: drop that many, on every release
    assert cache.get_seq_length() == 4
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.layers[0].keys.shape[0] == 1
    torch.testing.assert_close(cache.layers[0].keys[0], first_row[:, :4])


@pytest.mark.parametrize("make_batch", [text_batch, video_batch], ids=["text", "video"])
def test_greedy_generate_with_and_without_cache(model, make_batch):
    batch = make_batch()
    with torch.no_grad():
        cached = model.generate(**batch, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
        out = model.generate(**batch, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(cached, uncached)
    assert isinstance(out[modeling.CACHE_NAME], InternVideo3LatentCache), "generate() must use the latent cache by default"


def test_beam_search_on_latent_cache_matches_uncached_beam_search(model):
    """transformers' beam search over the latent cache (beams expanded, reordered every step, absorbed decode,
    rope_deltas per beam) keeps the beams and scores it keeps without a cache, where every step is one expanded forward
    over the whole sequence; and each beam starts from its own sample's video (pixel rows are not batch-first)."""
    batch = video_batch()
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=3, do_sample=False, output_logits=True,
                  output_scores=True, return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        cached = model.generate(**batch, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
        prefill = model(**batch, use_cache=False).logits[:, -1]  # [2, vocab], no expansion
    assert isinstance(cached[modeling.CACHE_NAME], InternVideo3LatentCache)
    assert cached.sequences.shape == (6, batch["input_ids"].shape[1] + 5)
    torch.testing.assert_close(cached.logits[0], prefill.repeat_interleave(3, dim=0), atol=1e-5, rtol=1e-5)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)
    assert len(set(map(tuple, cached.sequences[:3, -5:].tolist()))) == 3, "the beams must differ"


def test_placeholder_feature_mismatch_names_both_counts(model):
    batch = video_batch()
    batch["input_ids"][0, -3] = VIDEO_PAD  # one placeholder too many
    with pytest.raises(ValueError, match=r"\(17\).*\(16\)"):
        with torch.no_grad():
            model(**batch)


def test_8b_layout_on_meta_device():
    """The 8B config has exactly SPEC §3's attention keys and shapes, Qwen3-VL's other keys, 9,484,672,240 params."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        ours = InternVideo3ForConditionalGeneration(InternVideo3Config())
        qwen = Qwen3VLForConditionalGeneration(
            Qwen3VLConfig(
                text_config=dict(
                    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=5_000_000.0,
                    rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                ),
                vision_config=dict(out_hidden_size=4096),
                tie_word_embeddings=False,
            )
        )
    assert sum(p.numel() for p in ours.parameters()) == 9_484_672_240
    assert sum(p.numel() for p in qwen.parameters()) == 8_767_123_696
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    qwen_shapes = {k: tuple(v.shape) for k, v in qwen.state_dict().items()}
    expected_attention = {
        "q_proj.weight": (8192, 4096),
        "q_proj.bias": (8192,),
        "kv_a_proj_with_mqa.weight": (1024, 4096),
        "kv_a_proj_with_mqa.bias": (1024,),
        "kv_b_proj.weight": (8192, 896),
        "o_proj.weight": (4096, 4096),
    }
    for i in range(36):
        prefix = f"model.language_model.layers.{i}.self_attn."
        got = {k[len(prefix) :]: s for k, s in ours_shapes.items() if k.startswith(prefix)}
        assert got == expected_attention
    strip = lambda shapes: {k: s for k, s in shapes.items() if ".self_attn." not in k}  # noqa: E731
    assert strip(ours_shapes) == strip(qwen_shapes)


@pytest.mark.parametrize("make_batch", [text_batch, video_batch], ids=["text", "video"])
def test_query_chunked_prefill_matches_one_block(model, make_batch):
    """Attending in query blocks (bounded mask/score memory for long prompts) changes no logit."""
    batch = make_batch()
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        whole = model(**batch, use_cache=False).logits
        for layer in model.model.language_model.layers:
            layer.self_attn.query_chunk_size = 3
        chunked = model(**batch, use_cache=False).logits
    torch.testing.assert_close(chunked[valid], whole[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make_batch", [text_batch, video_batch], ids=["text", "video"])
def test_head_grouped_expansion_matches_one_expansion(model, make_batch, monkeypatch):
    """Expanding K/V a few heads at a time (bounded transient for long contexts) changes no logit, also over a cache."""
    batch = make_batch()
    valid = batch["attention_mask"].bool()
    layers = model.model.language_model.layers
    groups = []  # heads per expansion
    real = modeling.InternVideo3TextAttention._expanded_heads
    monkeypatch.setattr(
        modeling.InternVideo3TextAttention, "_expanded_heads",
        lambda self, q_nope, *a: groups.append(q_nope.shape[1]) or real(self, q_nope, *a),
    )  # fmt: skip
    with torch.no_grad():
        whole = model(**batch, use_cache=False).logits
        S = batch["input_ids"].shape[1]
        for layer in layers:  # room for one head's K/V of this prompt (fp32): every head is its own group
            layer.self_attn.expand_budget_bytes = S * (2 * 16 + 2 * 32) * 4
        grouped = model(**batch, use_cache=False).logits
        cache = InternVideo3LatentCache(model.config)
        first = {k: v for k, v in batch.items()}
        first["input_ids"], first["attention_mask"] = batch["input_ids"][:, :-2], batch["attention_mask"][:, :-2]
        model(**first, cache=cache, use_cache=True)
        tail = model(input_ids=batch["input_ids"][:, -2:], attention_mask=batch["attention_mask"],
                     cache=cache, use_cache=True).logits  # fmt: skip
    heads = model.config.text_config.num_attention_heads
    assert groups[: len(layers)] == [heads] * len(layers) and set(groups[len(layers) :]) == {1}
    torch.testing.assert_close(grouped[valid], whole[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tail, whole[:, -2:], atol=1e-4, rtol=1e-4)


def test_impossible_shapes_raise():
    from configuration_internvideo3 import InternVideo3TextConfig

    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        InternVideo3TextConfig(qk_rope_head_dim=15)
    with pytest.raises(ValueError, match="q_lora_rank"):
        InternVideo3TextConfig(q_lora_rank=1536)
    with pytest.raises(ValueError, match="kv_lora_rank_list has 2 entries for 36 layers"):
        InternVideo3TextConfig(kv_lora_rank_list=[896, 896])
    with pytest.raises(ValueError, match="mrope_section"):
        InternVideo3TextConfig(qk_rope_head_dim=64)


def test_static_latent_cache_generation(model):
    """generate(cache_implementation="static") pre-allocates latent buffers (values of their own width d_r, also on
    transformers 4.57, whose StaticLayer would give them the keys' width) and gives the dynamic cache's tokens."""
    batch = video_batch()
    with torch.no_grad():
        dynamic = model.generate(**batch, max_new_tokens=4, do_sample=False)
        static = model.generate(
            **batch, max_new_tokens=4, do_sample=False, cache_implementation="static", return_dict_in_generate=True
        )
    assert torch.equal(static.sequences, dynamic)
    layer = static[modeling.CACHE_NAME].layers[0]
    text = model.config.text_config
    assert layer.keys.shape[-1] == text.kv_lora_rank and layer.values.shape[-1] == text.qk_rope_head_dim


@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "expanded"])
def test_prefill_in_pieces_through_the_cache(model, absorb):
    """A prompt fed in two pieces through the cache (S > 1 over a non-empty cache: the causal block is aligned to the
    last key) gives the logits of one full forward, with the absorbed and with the expanded attention."""
    model.config.text_config._attn_implementation = "sdpa"
    ids = torch.arange(300, 324).view(2, 12)
    with torch.no_grad():
        reference = model(input_ids=ids, use_cache=False).logits
        for layer in model.model.language_model.layers:
            layer.self_attn.absorb_max_query_len = 64 if absorb else 0
        cache = InternVideo3LatentCache(model.config)
        first = model(input_ids=ids[:, :7], cache=cache, use_cache=True).logits
        second = model(input_ids=ids[:, 7:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, second], dim=1), reference, atol=1e-4, rtol=1e-4)
