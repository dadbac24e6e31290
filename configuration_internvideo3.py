# Copyright 2026 The internvideo3 authors. Licensed under the Apache License, Version 2.0.
"""Configuration of InternVideo3: Qwen3-VL-8B with M²LA (multimodal multi-head latent attention).

Defaults are the InternVideo3-8B-Instruct values (SPEC §2). The text config accepts the field spellings of the released
training code (`kv_lora_rank_list`, `qk_latent_layernorm`, `rope_interleave`, SPEC §3) and both RoPE spellings:
`rope_theta` + `rope_scaling` (transformers 4.57) and `rope_parameters` (transformers 5.x).

This file is shipped as Hub remote code: it imports only transformers at top level.
"""

from __future__ import annotations

import math
import numbers

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

_DEFAULT_MROPE_SECTION = [24, 20, 20]


def numeric_range(integer: bool, low, inclusive: bool) -> str:
    """The allowed range in words, as our messages give it: "an integer >= 1", "a number > 0"."""
    return f"{'an integer' if integer else 'a number'} {'>=' if inclusive else '>'} {low}"


def numeric_range_problem(value, integer: bool, low, inclusive: bool, strict_types: bool = False) -> str | None:
    """Why `value` is not `numeric_range(integer, low, inclusive)`: None (it is), "type" (not a number: a bool, a
    string, None, ...) or "range" (NaN, ±inf, at or below the bound, or a non-integral float where an integer is due).

    strict_types (the converter's options): only int and float are numbers, and an integer must be an int (2.0 is a
    "type" problem); otherwise (the processor's settings) any `numbers.Real`, and integral floats count as integers.
    The one range check of this package (processor settings, converter flags and options).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float) if strict_types else numbers.Real):
        return "type"
    if strict_types and integer and not isinstance(value, int):
        return "type"
    if not math.isfinite(value) or (value < low if inclusive else value <= low):
        return "range"
    if integer and not isinstance(value, numbers.Integral) and not float(value).is_integer():
        return "range"
    return None


def _resolve_rope(rope_theta, rope_scaling, rope_parameters, mrope_section, mrope_interleaved):
    """Merge the 4.57 (`rope_theta` + `rope_scaling`) and 5.x (`rope_parameters`) spellings into one dict.

    Returns:
        (rope_type: str, rope_theta: float, scaling: dict of the type's own parameters (factor, beta_fast, ...),
        mrope_section: list[int], mrope_interleaved: bool)

    Raises:
        ValueError: a `rope_type` that is neither "default" (also spelled "mrope") nor a key of transformers'
            `ROPE_INIT_FUNCTIONS` (the types Qwen3-VL's text rotary takes), a `partial_rotary_factor` other than 1
            (M²LA's RoPE width is `qk_rope_head_dim`), or a bad `mrope_section`.
    """
    merged = {}
    for source in (rope_scaling, rope_parameters):
        if isinstance(source, dict):
            merged.update(source)
    rope_type = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    if rope_type == "mrope":  # Qwen2-VL's name for plain (unscaled) MRoPE
        rope_type = "default"
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(
            f"rope_type={rope_type!r} is not a RoPE type of this transformers "
            f"(default, {', '.join(ROPE_INIT_FUNCTIONS)})"
        )
    if float(merged.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(
            f"partial_rotary_factor={merged['partial_rotary_factor']}: M²LA rotates exactly qk_rope_head_dim channels "
            "per head (set qk_rope_head_dim instead)"
        )
    theta = float(merged.pop("rope_theta", rope_theta if rope_theta is not None else 5_000_000.0))
    section = merged.pop("mrope_section", None)
    section = list(mrope_section if mrope_section is not None else section or _DEFAULT_MROPE_SECTION)
    interleaved = merged.pop("mrope_interleaved", True)
    interleaved = bool(interleaved if mrope_interleaved is None else mrope_interleaved)
    if len(section) != 3 or any(int(s) < 0 for s in section):
        raise ValueError(f"mrope_section must list 3 non-negative frequency counts (T, H, W), got {section}")
    return rope_type, theta, merged, [int(s) for s in section], interleaved


class InternVideo3TextConfig(PretrainedConfig):
    r"""Text decoder of InternVideo3 (Qwen3-VL-8B text stack with M²LA attention, SPEC §2 and §4).

    Args:
        vocab_size (`int`, 151936): embedding rows.
        hidden_size (`int`, 4096), intermediate_size (`int`, 12288): residual width and SwiGLU width.
        num_hidden_layers (`int`, 36), num_attention_heads (`int`, 32).
        head_dim (`int`, 128): head width of the source GQA model; kept for reference and conversion.
        source_num_key_value_heads (`int`, 8): KV heads of the source GQA model, for cache-size comparisons:
            a GQA cache holds 2 · source_num_key_value_heads · head_dim values per token per layer.
        kv_lora_rank (`int`, 896): latent width r cached per token (excludes the RoPE key).
        kv_lora_rank_list (`list[int]`, optional): per-layer ranks; overrides `kv_lora_rank` layer by layer.
        q_lora_rank (`int`, optional): must be None (direct `q_proj`); kept for the released config's field.
        qk_nope_head_dim / qk_rope_head_dim / v_head_dim (`int`, 128 each): per-head widths; q/k head = nope + rope.
        attention_bias (`bool`, True): `q_proj` and `kv_a_proj_with_mqa` have biases. `from_pretrained` overrides this
            from the checkpoint's keys (SPEC §3: the released `config.json` may say otherwise).
        qk_latent_layernorm (`bool`, False): an RMSNorm `kv_a_layernorm` on the latent c. Overridden from the keys too.
        q_norm (`bool`, False): a per-head RMSNorm `q_norm` (weight [head_dim]) whose RMS is taken over the first
            head_dim query channels of each head and scales the whole head: a converted Qwen3 source's q_norm kept
            exact (SPEC §9.4; converter `--q-norm exact`). Released checkpoints have none. Not inferred from the keys:
            a `q_norm.weight` left over from a Qwen3 checkpoint without this flag is an unexpected key.
        k_norm (`bool`, False): a per-head RMSNorm `k_norm` (weight [head_dim], stored pair-interleaved like the k_pe
            rows) applied to each block of head_dim channels of k_pe before RoPE: a converted Qwen3 source's k_norm
            kept exact in the equal-cache exact form (SPEC §9.4: block g of k_pe is source KV head g's key). The cache
            stores k_pe after it and RoPE, so the cache layout is unchanged. Needs rope_interleave and
            qk_rope_head_dim a multiple of head_dim. Released checkpoints have none; not inferred from the keys.
        rope_frequency_planes (`list[list[int]]`, optional): per layer, the RoPE frequency of each of the
            qk_rope_head_dim / 2 planes of q_pe/k_pe, as an index i into the planes of a RoPE of width head_dim
            (inv_freq = theta^(-2i / head_dim), MRoPE axis of plane i). Lets a converted model keep several rotated
            components per source frequency (converter `--rope-dim`). None (default, the released model): plane j
            has inv_freq = theta^(-2j / qk_rope_head_dim).
        rope_interleave (`bool`, True): the q_pe/k_pe channels are stored pair-interleaved (SPEC §5.3).
        rope_theta (`float`, 5e6), mrope_section (`list[int]`, [24, 20, 20]), mrope_interleaved (`bool`, True).
        rope_scaling / rope_parameters (`dict`, optional): the RoPE fields in transformers 4.57's / 5.x's spelling
            (either is read on every release, merged into `rope_parameters`): `rope_type` "default" or any type
            Qwen3-VL's text rotary takes (transformers' `ROPE_INIT_FUNCTIONS`: linear, dynamic, yarn, longrope,
            llama3, ...) with that type's parameters (`factor`, `original_max_position_embeddings`, ...), applied to
            the RoPE part of M²LA (width qk_rope_head_dim, or head_dim with `rope_frequency_planes`) exactly as
            transformers applies it to Qwen3-VL of that head width: how the context is extended past
            max_position_embeddings.
        attention_query_chunk_size (`int`, 4096): prefill attends in query blocks of this many tokens, so a long
            prompt never materialises an [S, T] mask or score matrix.
        attention_expand_budget_bytes (`int`, 268435456 = 256 MiB): prefill expands the latent to per-head K/V for
            as many heads at a time as fit this many bytes, so long contexts keep a bounded transient.
        max_position_embeddings (`int`, 262144), rms_norm_eps (`float`, 1e-6), hidden_act (`str`, "silu").

    Raises:
        ValueError: on shapes that cannot work (e.g. `q_lora_rank` set, a non-positive width, an odd RoPE width,
            an `mrope_section` that does not fit `qk_rope_head_dim // 2` frequencies, a rank list of the wrong length).
    """

    model_type = "internvideo3_text"
    base_config_key = "text_config"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache's name before and since transformers 5.24
    ignore_keys_at_rope_validation = {"mrope_section", "mrope_interleaved"}

    def __init__(
        self,
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=128,
        kv_lora_rank=896,
        kv_lora_rank_list=None,
        q_lora_rank=None,
        qk_nope_head_dim=128,
        qk_rope_head_dim=128,
        v_head_dim=128,
        hidden_act="silu",
        max_position_embeddings=262144,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        attention_bias=True,
        attention_dropout=0.0,
        qk_latent_layernorm=False,
        q_norm=False,
        k_norm=False,
        rope_frequency_planes=None,
        rope_interleave=True,
        rope_theta=None,
        rope_scaling=None,
        rope_parameters=None,
        mrope_section=None,
        mrope_interleaved=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        source_num_key_value_heads=8,
        attention_query_chunk_size=4096,
        attention_expand_budget_bytes=256 << 20,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        # After conversion every head has its own K/V; kept so generic tooling that reads it sees the truth.
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        # KV heads of the GQA model this one was converted from (Qwen3-VL-8B: 8); only for cache-size comparisons.
        self.source_num_key_value_heads = source_num_key_value_heads
        self.kv_lora_rank = kv_lora_rank
        self.kv_lora_rank_list = list(kv_lora_rank_list) if kv_lora_rank_list is not None else None
        self.q_lora_rank = q_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.attention_bias = bool(attention_bias)
        self.attention_dropout = attention_dropout
        self.attention_query_chunk_size = attention_query_chunk_size
        self.attention_expand_budget_bytes = attention_expand_budget_bytes
        self.qk_latent_layernorm = bool(qk_latent_layernorm)
        self.q_norm = bool(q_norm)
        self.k_norm = bool(k_norm)
        self.rope_frequency_planes = (
            [[int(i) for i in planes] for planes in rope_frequency_planes] if rope_frequency_planes is not None else None
        )
        self.rope_interleave = bool(rope_interleave)
        rope_type, theta, scaling, section, interleaved = _resolve_rope(
            rope_theta, rope_scaling, rope_parameters, mrope_section, mrope_interleaved
        )
        self.rope_theta = theta
        self.mrope_section = section
        self.mrope_interleaved = interleaved
        # One dict in the 5.x spelling on every release (4.57 keeps it as a plain attribute and reads nothing else
        # here); the rotary embedding hands it to transformers' RoPE init functions in the installed release's form.
        self.rope_parameters = {
            "rope_type": rope_type,
            "rope_theta": theta,
            **scaling,
            "mrope_section": section,
            "mrope_interleaved": interleaved,
        }
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_m2la()

    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head: qk_nope_head_dim + qk_rope_head_dim (256 for the 8B model)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """(qk_nope_head_dim + qk_rope_head_dim) ** -0.5 = 1/16 for the 8B model (SPEC §2, §4)."""
        return self.qk_head_dim**-0.5

    def layer_kv_lora_rank(self, layer_idx: int) -> int:
        """Latent width r of layer `layer_idx` (from `kv_lora_rank_list` when given, SPEC §2)."""
        if self.kv_lora_rank_list is not None:
            return int(self.kv_lora_rank_list[layer_idx])
        return int(self.kv_lora_rank)

    def gqa_cache_values_per_token(self) -> int:
        """Values a GQA cache of the source model holds per token over all layers: L · 2 · kv_heads · head_dim."""
        return self.num_hidden_layers * 2 * self.source_num_key_value_heads * self.head_dim

    def validate_m2la(self) -> None:
        """Raise `ValueError` on impossible M²LA shapes (SPEC §2-§5)."""
        positive = {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "vocab_size": self.vocab_size,
            "attention_query_chunk_size": self.attention_query_chunk_size,
            "attention_expand_budget_bytes": self.attention_expand_budget_bytes,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.qk_nope_head_dim, int) or self.qk_nope_head_dim < 0:
            raise ValueError(f"qk_nope_head_dim must be a non-negative integer, got {self.qk_nope_head_dim!r}")
        if self.q_lora_rank is not None:
            raise ValueError(
                f"q_lora_rank={self.q_lora_rank}: InternVideo3 uses a direct q_proj (q_lora_rank=None, SPEC §2)"
            )
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        planes = self.rope_frequency_planes
        rotary_dim = self.head_dim if planes is not None else self.qk_rope_head_dim
        if sum(self.mrope_section) > rotary_dim // 2:
            raise ValueError(
                f"mrope_section {self.mrope_section} needs {sum(self.mrope_section)} frequencies but "
                f"the RoPE width {rotary_dim} has only {rotary_dim // 2}"
            )
        if planes is not None:
            bad = [i for i, p in enumerate(planes) if len(p) != self.qk_rope_head_dim // 2
                   or any(not 0 <= j < self.head_dim // 2 for j in p)]
            if len(planes) != self.num_hidden_layers or bad:
                raise ValueError(
                    f"rope_frequency_planes needs {self.num_hidden_layers} lists of qk_rope_head_dim / 2 = "
                    f"{self.qk_rope_head_dim // 2} plane indices in 0..{self.head_dim // 2 - 1}; got {len(planes)} "
                    f"lists{f', wrong at layers {bad}' if bad else ''}"
                )
        if self.q_norm and self.qk_nope_head_dim < self.head_dim:
            raise ValueError(f"q_norm needs qk_nope_head_dim >= head_dim ({self.head_dim}): its RMS is taken over "
                             f"the first head_dim query channels; got qk_nope_head_dim={self.qk_nope_head_dim}")
        if self.k_norm and (not self.rope_interleave or self.qk_rope_head_dim % self.head_dim):
            raise ValueError(f"k_norm needs rope_interleave and qk_rope_head_dim a multiple of head_dim "
                             f"({self.head_dim}): it normalises each block of head_dim k_pe channels; got "
                             f"qk_rope_head_dim={self.qk_rope_head_dim}, rope_interleave={self.rope_interleave}")
        if self.kv_lora_rank_list is not None:
            if len(self.kv_lora_rank_list) != self.num_hidden_layers:
                raise ValueError(
                    f"kv_lora_rank_list has {len(self.kv_lora_rank_list)} entries for "
                    f"{self.num_hidden_layers} layers"
                )
            if any(int(r) <= 0 for r in self.kv_lora_rank_list):
                raise ValueError(f"kv_lora_rank_list entries must be positive, got {self.kv_lora_rank_list}")


class InternVideo3VisionConfig(PretrainedConfig):
    r"""Vision tower of InternVideo3, identical to Qwen3-VL-8B's (SPEC §2, §6).

    Args:
        depth (27), hidden_size (1152), num_heads (16), intermediate_size (4304), hidden_act ("gelu_pytorch_tanh"),
        patch_size (16 pixels), temporal_patch_size (2 frames), spatial_merge_size (2), in_channels (3),
        num_position_embeddings (2304 = 48×48 learned grid), out_hidden_size (4096 = text hidden size),
        deepstack_visual_indexes ([8, 16, 24]: ViT blocks whose outputs feed DeepStack).

    Raises:
        ValueError: hidden size not divisible by heads, a DeepStack index outside the blocks, or a non-square
            position grid.
    """

    model_type = "internvideo3_vision"
    base_config_key = "vision_config"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "depth"}

    def __init__(
        self,
        depth=27,
        hidden_size=1152,
        hidden_act="gelu_pytorch_tanh",
        intermediate_size=4304,
        num_heads=16,
        in_channels=3,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=4096,
        num_position_embeddings=2304,
        deepstack_visual_indexes=(8, 16, 24),
        initializer_range=0.02,
        **kwargs,
    ):
        self.depth = depth
        self.hidden_size = hidden_size
        self.hidden_act = hidden_act
        self.intermediate_size = intermediate_size
        self.num_heads = num_heads
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.temporal_patch_size = temporal_patch_size
        self.out_hidden_size = out_hidden_size
        self.num_position_embeddings = num_position_embeddings
        self.deepstack_visual_indexes = list(deepstack_visual_indexes)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        # Qwen3-VL's 2-D rotary is fixed (SPEC §6; 4.57 hard-codes it); transformers >= 5's vision tower reads it here.
        self.rope_parameters = {"rope_type": "axial", "rope_theta": 10000.0}
        if hidden_size % num_heads:
            raise ValueError(f"vision hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if (hidden_size // num_heads) % 4:
            raise ValueError(f"vision head_dim {hidden_size // num_heads} must be divisible by 4 (2-D rotary)")
        if any(not 0 <= i < depth for i in self.deepstack_visual_indexes):
            raise ValueError(f"deepstack_visual_indexes {self.deepstack_visual_indexes} outside 0..{depth - 1}")
        side = int(round(num_position_embeddings**0.5))
        if side * side != num_position_embeddings:
            raise ValueError(f"num_position_embeddings {num_position_embeddings} is not a square grid")


class InternVideo3Config(PretrainedConfig):
    r"""InternVideo3 = Qwen3-VL vision tower + M²LA text decoder (SPEC §1-§2).

    Args:
        text_config (`dict` or `InternVideo3TextConfig`), vision_config (`dict` or `InternVideo3VisionConfig`).
        image_token_id (151655), video_token_id (151656), vision_start_token_id (151652), vision_end_token_id (151653).
        tie_word_embeddings (`bool`, False): the 8B model has an untied `lm_head`.

    Raises:
        ValueError: the vision tower's `out_hidden_size` differs from the text `hidden_size`.
    """

    model_type = "internvideo3"
    sub_configs = {"text_config": InternVideo3TextConfig, "vision_config": InternVideo3VisionConfig}
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache's name before and since transformers 5.24

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=False,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = InternVideo3TextConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        elif text_config is None:
            text_config = InternVideo3TextConfig()
        if isinstance(vision_config, dict):
            vision_config = InternVideo3VisionConfig(
                **{k: v for k, v in vision_config.items() if k != "model_type"}
            )
        elif vision_config is None:
            vision_config = InternVideo3VisionConfig()
        self.text_config = text_config
        self.vision_config = vision_config
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.vision_start_token_id = vision_start_token_id
        self.vision_end_token_id = vision_end_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        if vision_config.out_hidden_size != text_config.hidden_size:
            raise ValueError(
                f"vision_config.out_hidden_size ({vision_config.out_hidden_size}) must equal "
                f"text_config.hidden_size ({text_config.hidden_size})"
            )

    def get_text_config(self, *args, **kwargs):
        """The decoder's config (generation reads `num_hidden_layers`, `vocab_size`, ... from it)."""
        return self.text_config


__all__ = ["InternVideo3Config", "InternVideo3TextConfig", "InternVideo3VisionConfig"]
