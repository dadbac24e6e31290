"""InternVideo3 in vLLM: the text decoder with M²LA through vLLM's MLA layer (SPEC §3-§5).

Reused from vLLM: `MultiHeadLatentAttentionWrapper` / `MLAModules` (latent cache of r + d_r values per token and layer,
absorbed decode, prefill expansion through `kv_b_proj`), MRoPE from `get_rope` (interleaved sections;
`is_neox_style=False` is the pair-interleaved q_pe/k_pe layout of SPEC §5.3, the same rotation up to a channel
permutation shared by q and k), vLLM's RMSNorm, parallel linears, embedding, LM head and `AutoWeightsLoader`.
Written here: what our layout needs (checkpoint names as `from_pretrained` reads them, no latent norm unless the
checkpoint has one, the optional q_norm over the first head_dim channels, separate gate/up projections) and what
converted folders add (SPEC §9.4): per-layer `rope_frequency_planes` and the optional exact k_norm
(`PlaneRotaryEmbedding`), and the text-only architecture `InternVideo3TextForCausalLM`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, LinearBase, ReplicatedLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mla import MLAModules, MultiHeadLatentAttentionWrapper
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.rotary_embedding.common import ApplyRotaryEmb
from vllm.model_executor.layers.rotary_embedding.mrope import apply_interleaved_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal, _require_is_multimodal
from vllm.model_executor.models.utils import AutoWeightsLoader, _merge_multimodal_embeddings, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.platforms import current_platform

# The remote-code model's own parts, importable as the package installs them: the q_norm arithmetic (SPEC §9.4),
# the vision tower (transformers' Qwen3-VL class, SPEC §6) and the MRoPE positions (SPEC §5.4).
from modeling_internvideo3 import InternVideo3VisionModel, mrope_position_ids, rms_norm

from .processing import (
    IMAGE_SLOT, VIDEO_SLOT, InternVideo3DummyInputsBuilder, InternVideo3MultiModalProcessor, InternVideo3ProcessingInfo,
)


class QProjWithNorm(nn.Module):
    """q_proj followed by the converted Qwen3 q_norm (SPEC §9.4): the RMS of each head's first head_dim channels
    scales the whole head. Returns (q [N, H·(d_n + d_r)], None) as vLLM's linears do."""

    def __init__(self, q_proj: nn.Module, num_heads: int, head_dim: int, eps: float, prefix: str):
        super().__init__()
        self.q_proj = q_proj
        self.num_heads = num_heads
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim), requires_grad=False)

    def forward(self, x):
        q = self.q_proj(x)[0]
        q = q.view(q.shape[0], self.num_heads, -1)
        q = rms_norm(q, self.weight, self.eps, channels=self.weight.shape[0])
        return q.reshape(q.shape[0], -1), None


def _merge_mrope_sections(x: torch.Tensor, section: list[int], interleaved: bool) -> torch.Tensor:
    """[3, N, F] per-axis values -> [N, F]: each frequency slot from its MRoPE axis, as vLLM's `MRotaryEmbedding`
    selects them (interleaved T/H/W slots, or chunked [T.. H.. W..] sections)."""
    if interleaved:
        return apply_interleaved_rope(x, section)
    return torch.cat([m[i] for i, m in enumerate(x.split(section, dim=-1))], dim=-1)


class PlaneRotaryEmbedding(nn.Module):
    """RoPE of a converted layer with `rope_frequency_planes` (SPEC §9.4): plane p of q_pe / k_pe (channels 2p, 2p + 1
    in the pair-interleaved layout) rotates at frequency planes[p] of the source's RoPE of width head_dim, with the
    MRoPE axis that frequency has there, as `InternVideo3Attention` indexes its cos/sin (`rope_index`). `source`
    is vLLM's rotary embedding of width head_dim (`get_rope`: cos/sin cache with RoPE scaling, the sections);
    this module selects the planes and rotates in fp32 with vLLM's `ApplyRotaryEmb`. A kept Qwen3 `k_norm` (exact
    equal-cache form) normalises each head_dim block of k_pe before the rotation, as the transformers model does.

    forward(positions [N] or [3, N], q_pe [N, H, d_r], k_pe [N, 1, d_r]) -> rotated (q_pe, k_pe).
    """

    def __init__(self, source: nn.Module, planes: list[int], k_norm: nn.Module | None = None):
        super().__init__()
        self.source = source
        self.register_buffer("planes", torch.tensor(planes, dtype=torch.long), persistent=False)
        self._k_norm = (k_norm,)  # the attention's own module (checkpoint name `self_attn.k_norm`), not registered here

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
        source = self.source
        cos, sin = source._match_cos_sin_cache_dtype(query)[positions].float().chunk(2, dim=-1)  # [(3,) N, d / 2]
        if positions.ndim == 2:
            cos, sin = (_merge_mrope_sections(t, source.mrope_section, source.mrope_interleaved) for t in (cos, sin))
        cos, sin = cos[..., self.planes], sin[..., self.planes]  # [N, d_r / 2]
        (k_norm,) = self._k_norm
        if k_norm is not None:
            key = k_norm.forward_native(key.unflatten(-1, (-1, k_norm.weight.shape[0]))).flatten(-2)

        def rotate(x):
            return ApplyRotaryEmb.forward_static(x, cos, sin, source.is_neox_style, enable_fp32_compute=True)

        return rotate(query), rotate(key)


class InternVideo3TextAttention(nn.Module):
    def __init__(self, config, layer_idx: int, cache_config, quant_config, prefix: str):
        super().__init__()
        planes = config.rope_frequency_planes[layer_idx] if config.rope_frequency_planes is not None else None
        H, d_n, d_r, d_v = (config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim,
                            config.v_head_dim)
        r = config.layer_kv_lora_rank(layer_idx)
        D = config.hidden_size
        bias = config.attention_bias
        self.q_proj = ColumnParallelLinear(D, H * (d_n + d_r), bias=bias, quant_config=quant_config,
                                           prefix=f"{prefix}.q_proj")
        self.kv_a_proj_with_mqa = ReplicatedLinear(D, r + d_r, bias=bias, quant_config=quant_config,
                                                   prefix=f"{prefix}.kv_a_proj_with_mqa")
        # The released model has no latent norm (SPEC §3); vLLM's wrapper calls kv_a_layernorm unconditionally.
        self.kv_a_layernorm = RMSNorm(r, eps=config.rms_norm_eps) if config.qk_latent_layernorm else nn.Identity()
        self.kv_b_proj = ColumnParallelLinear(r, H * (d_n + d_v), bias=False, quant_config=quant_config,
                                              prefix=f"{prefix}.kv_b_proj")
        self.o_proj = RowParallelLinear(H * d_v, D, bias=False, quant_config=quant_config, prefix=f"{prefix}.o_proj")
        rope_parameters = dict(config.rope_parameters)
        rope_parameters.setdefault("mrope_section", list(config.mrope_section))
        rope_parameters.setdefault("mrope_interleaved", config.mrope_interleaved)
        # With `rope_frequency_planes` the planes come out of a RoPE of the source's width head_dim.
        self.rotary_emb = get_rope(config.head_dim if planes is not None else d_r,
                                   max_position=config.max_position_embeddings, rope_parameters=rope_parameters,
                                   is_neox_style=not config.rope_interleave)
        self.k_norm = RMSNorm(config.head_dim, eps=config.rms_norm_eps) if config.k_norm else None
        if planes is not None:
            self.rotary_emb = PlaneRotaryEmbedding(self.rotary_emb, planes, self.k_norm)
        elif self.k_norm is not None:  # the converter keeps k_norm only in the equal-cache form, which has planes
            raise NotImplementedError("vLLM plugin: k_norm without rope_frequency_planes")
        q_module = self.q_proj
        if config.q_norm:
            self.q_norm = QProjWithNorm(self.q_proj, H, config.head_dim, config.rms_norm_eps, f"{prefix}.q_norm")
            q_module = self.q_norm
        self.mla_attn = MultiHeadLatentAttentionWrapper(
            hidden_size=D, num_heads=H, scale=config.softmax_scale, qk_nope_head_dim=d_n, qk_rope_head_dim=d_r,
            v_head_dim=d_v, q_lora_rank=None, kv_lora_rank=r,
            mla_modules=MLAModules(
                kv_a_layernorm=self.kv_a_layernorm, kv_b_proj=self.kv_b_proj, rotary_emb=self.rotary_emb,
                o_proj=self.o_proj, fused_qkv_a_proj=None, kv_a_proj_with_mqa=self.kv_a_proj_with_mqa,
                q_a_layernorm=None, q_b_proj=None, q_proj=q_module, indexer=None, is_sparse=False,
                topk_indices_buffer=None,
            ),
            cache_config=cache_config, quant_config=quant_config, prefix=prefix,
        )

    def forward(self, positions, hidden_states):
        return self.mla_attn(positions, hidden_states)


class InternVideo3TextMLP(nn.Module):
    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        D, F = config.hidden_size, config.intermediate_size
        self.gate_proj = ColumnParallelLinear(D, F, bias=False, quant_config=quant_config, prefix=f"{prefix}.gate_proj")
        self.up_proj = ColumnParallelLinear(D, F, bias=False, quant_config=quant_config, prefix=f"{prefix}.up_proj")
        self.down_proj = RowParallelLinear(F, D, bias=False, quant_config=quant_config, prefix=f"{prefix}.down_proj")
        if config.hidden_act != "silu":
            raise NotImplementedError(f"vLLM plugin: hidden_act {config.hidden_act!r}")

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)[0]) * self.up_proj(x)[0])[0]


class InternVideo3TextDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx, cache_config, quant_config, prefix: str):
        super().__init__()
        self.self_attn = InternVideo3TextAttention(config, layer_idx, cache_config, quant_config, f"{prefix}.self_attn")
        self.mlp = InternVideo3TextMLP(config, quant_config, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions, hidden_states):
        # Plain residual adds (not vLLM's fused add-norm) keep the transformers model's fp32 order of operations.
        hidden_states = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states))
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class InternVideo3TextModel(nn.Module):
    def __init__(self, config, cache_config, quant_config, prefix: str):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens")
        self.layers = nn.ModuleList(
            InternVideo3TextDecoderLayer(config, i, cache_config, quant_config, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions, inputs_embeds, deepstack_embeds=None):
        """deepstack_embeds [L, N, D] or None: added after layer i (i < L), zero at text tokens (SPEC §6)."""
        hidden_states = inputs_embeds
        for i, layer in enumerate(self.layers):
            hidden_states = layer(positions, hidden_states)
            if deepstack_embeds is not None and i < deepstack_embeds.shape[0]:
                hidden_states = hidden_states + deepstack_embeds[i]
        return self.norm(hidden_states)


class _Inner(nn.Module):
    """`model.` of the checkpoint: `model.language_model.*` (and `model.visual.*`)."""

    def __init__(self, config, cache_config, quant_config, prefix: str):
        super().__init__()
        # transformers' module, run eagerly by vLLM; its attention follows the config's implementation.
        config.vision_config._attn_implementation = "sdpa"
        self.visual = InternVideo3VisionModel(config.vision_config)
        self.language_model = InternVideo3TextModel(config.text_config, cache_config, quant_config,
                                                    f"{prefix}.language_model")


def _check_single_rank(text_config) -> None:
    kv_ranks = {text_config.layer_kv_lora_rank(i) for i in range(text_config.num_hidden_layers)}
    if len(kv_ranks) > 1:  # vLLM sizes one MLA head for all layers from the config (get_head_size)
        raise NotImplementedError(f"vLLM plugin: per-layer kv_lora_rank_list {sorted(kv_ranks)}")


def _keep_plain_linear_weights(vllm_config: VllmConfig, decoder: nn.Module) -> None:
    """In an engine inside a training process on CPU (TRL's colocate rollouts: vLLM's `external_launcher`), let the
    decoder's linear layers keep plain weights: their weights are updated in place through `load_weights`, but
    vLLM-CPU repacks each linear layer for oneDNN and frees its weight after loading (layers/linear.py,
    `dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`), which leaves nothing to load into.
    `_cpu_skip_gemm_dispatch` is vLLM's own opt-out (set on MLA's kv_b_proj): F.linear on the kept weight."""
    in_training = vllm_config.parallel_config.distributed_executor_backend == "external_launcher"
    if current_platform.is_cpu() and in_training:
        for module in decoder.modules():
            if isinstance(module, LinearBase):
                module._cpu_skip_gemm_dispatch = True


class _LoadsWeightsInPlace:
    """`load_weights` of both model classes."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint names -> parameters, at start-up and into a running engine (TRL's `sync_weights` calls this
        once per parameter).

        Into a running engine on CPU, a layer whose weight vLLM-CPU had packed for oneDNN after loading (it keeps
        a packed copy and calls it through `cpu_linear`; the LM head and embeddings, which keep their weight too)
        would go on computing with the old copy, so its quant method's `process_weights_after_loading` packs the
        new weight again. Linear layers of an in-training engine keep plain weights (`_keep_plain_linear_weights`)."""
        loaded = AutoWeightsLoader(self).load_weights(weights)
        for name in loaded:
            module = self.get_submodule(name.rpartition(".")[0])
            if hasattr(module, "cpu_linear") and getattr(module, "quant_method", None) is not None:
                module.quant_method.process_weights_after_loading(module)
        return loaded


@MULTIMODAL_REGISTRY.register_processor(
    InternVideo3MultiModalProcessor, info=InternVideo3ProcessingInfo, dummy_inputs=InternVideo3DummyInputsBuilder
)
class InternVideo3ForConditionalGeneration(
    _LoadsWeightsInPlace, nn.Module, SupportsMultiModal, SupportsMRoPE
):
    """vLLM model for `InternVideo3ForConditionalGeneration` folders (module names = checkpoint names, SPEC §3):
    transformers' vision tower, the M²LA decoder on vLLM's MLA layer, DeepStack and MRoPE as our transformers model.

    Raises:
        NotImplementedError: per-layer `kv_lora_rank_list` (vLLM sizes one MLA head for all layers) or a `hidden_act`
            other than silu.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        text_config = config.text_config
        _check_single_rank(text_config)
        self.config = config
        self.model = _Inner(config, vllm_config.cache_config, vllm_config.quant_config, maybe_prefix(prefix, "model"))
        _keep_plain_linear_weights(vllm_config, self.model.language_model)
        self.lm_head = ParallelLMHead(text_config.vocab_size, text_config.hidden_size,
                                      prefix=maybe_prefix(prefix, "lm_head"))
        if text_config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.language_model.embed_tokens)
        self.logits_processor = LogitsProcessor(text_config.vocab_size)
        self.deepstack_levels = len(config.vision_config.deepstack_visual_indexes)
        # DeepStack features of the tokens being embedded, from `embed_input_ids` to the `forward` that follows it.
        self._deepstack_embeds: torch.Tensor | None = None

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_SLOT
        if modality.startswith("video"):
            return VIDEO_SLOT
        raise ValueError(f"InternVideo3 takes image and video input, not {modality!r}")

    def embed_multimodal(self, **kwargs) -> tuple[torch.Tensor, ...]:
        """One [n_i, D · (1 + L)] tensor per item, in the order of the inputs: the merged embeddings of its n_i
        placeholder tokens followed by its L DeepStack feature sets along the last axis (as vLLM's Qwen3-VL carries
        them through the encoder cache)."""
        items = []
        for key in kwargs:  # the modalities in the order vLLM gave them
            if key not in ("pixel_values", "pixel_values_videos") or kwargs[key] is None:
                continue
            grid = kwargs["image_grid_thw" if key == "pixel_values" else "video_grid_thw"]
            pixels = kwargs[key]
            pixels = torch.cat(list(pixels)) if isinstance(pixels, (list, tuple)) else pixels
            grid = (torch.stack(list(grid)) if isinstance(grid, (list, tuple)) else grid).reshape(-1, 3)
            out = self.model.visual(pixels.to(self.model.visual.dtype), grid)
            joint = torch.cat([out.pooler_output, *out.deepstack_features], dim=-1)
            merge = self.model.visual.spatial_merge_size**2
            items.extend(torch.split(joint, (grid.prod(-1) // merge).tolist()))
        return tuple(items)

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *, is_multimodal=None):
        embed = self.model.language_model.embed_tokens
        inputs_embeds = self._embed_text_input_ids(input_ids, embed, is_multimodal=is_multimodal)
        self._deepstack_embeds = None
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return inputs_embeds
        is_multimodal = _require_is_multimodal(is_multimodal)
        D = inputs_embeds.shape[-1]
        lengths = [len(x) for x in multimodal_embeddings]
        main, deep = torch.cat(list(multimodal_embeddings)).split([D, D * self.deepstack_levels], dim=-1)
        deepstack = inputs_embeds.new_zeros(inputs_embeds.shape[0], D * self.deepstack_levels)
        deepstack = _merge_multimodal_embeddings(deepstack, torch.split(deep, lengths), is_multimodal)
        self._deepstack_embeds = deepstack.view(-1, self.deepstack_levels, D).permute(1, 0, 2)
        return _merge_multimodal_embeddings(inputs_embeds, torch.split(main, lengths), is_multimodal)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        deepstack = None
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        elif self._deepstack_embeds is not None and self._deepstack_embeds.shape[1] == inputs_embeds.shape[0]:
            deepstack = self._deepstack_embeds
        self._deepstack_embeds = None
        return self.model.language_model(positions, inputs_embeds, deepstack)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple[torch.Tensor, int]:
        """[3, S] (T, H, W) positions of the prompt and the delta of later positions (position = index + delta),
        from our transformers model's `mrope_position_ids` with the items' grids in prompt order (SPEC §5.4)."""
        grids = {"image": [], "video": []}
        for feature in sorted(mm_features or [], key=lambda f: f.mm_position.offset):
            grids[feature.modality].append(feature.data[f"{feature.modality}_grid_thw"].data.reshape(3))
        image_grid = torch.stack(grids["image"]) if grids["image"] else None
        video_grid = torch.stack(grids["video"]) if grids["video"] else None
        positions, delta = mrope_position_ids(self.config, torch.tensor([input_tokens]), image_grid, video_grid)
        return positions[:, 0], int(delta)


class InternVideo3TextForCausalLM(_LoadsWeightsInPlace, nn.Module, SupportsMRoPE):
    """vLLM model for `InternVideo3TextForCausalLM` folders (`model_type` "internvideo3_text": converted Qwen3 / Qwen2
    / Llama text sources, SPEC §9; keys `model.*`, `lm_head.weight`): the same M²LA decoder, text positions.

    Raises:
        NotImplementedError: as `InternVideo3ForConditionalGeneration`.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        _check_single_rank(config)
        self.config = config
        self.model = InternVideo3TextModel(config, vllm_config.cache_config, vllm_config.quant_config,
                                           maybe_prefix(prefix, "model"))
        _keep_plain_linear_weights(vllm_config, self.model)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.model(positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple[torch.Tensor, int]:
        """[3, S] text positions (three equal rows, delta 0), as our transformers text model computes them: vLLM
        runs every model whose RoPE has MRoPE sections with 3-D positions."""
        return torch.arange(len(input_tokens)).expand(3, -1), 0
