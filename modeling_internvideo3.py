# Copyright 2026 The internvideo3 authors. Licensed under the Apache License, Version 2.0.
"""InternVideo3: the Qwen3-VL vision tower + a text decoder whose attention is M²LA (multimodal multi-head latent
attention), with a latent KV cache and absorbed decode.

The file reads top to bottom as the architecture (SPEC §1): outputs -> rotary helpers -> vision tower
(transformers' Qwen3-VL one) -> attention functions and mask -> text blocks (MRoPE, RMSNorm, M²LA attention, MLP,
decoder layer) -> latent cache -> `PreTrainedModel` base -> text model -> multimodal model -> causal-LM heads.

Shape letters used everywhere: B batch, S query length, T cached + current length, H heads, r `kv_lora_rank`,
d_r `qk_rope_head_dim`, d_n `qk_nope_head_dim`, d_v `v_head_dim`, D hidden size, N vision patches.

Shipped as Hub remote code (SPEC §8): top-level imports are torch and transformers only; sibling files are imported
relatively (flat), with a fallback for a source checkout.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import inspect
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticCache, StaticLayer
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.models.qwen3_vl import modeling_qwen3_vl
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

try:  # Hub export / checkpoint folder: flat sibling files
    from .configuration_internvideo3 import InternVideo3Config, InternVideo3TextConfig, InternVideo3VisionConfig
except ImportError:  # source checkout with the repository root on sys.path
    from configuration_internvideo3 import InternVideo3Config, InternVideo3TextConfig, InternVideo3VisionConfig

try:  # Hub export / checkpoint folder: the kernel copied flat beside this file
    from .latent_attention import latent_attention_decode
except ImportError:  # the installed package (`pip install`), which maps the repository's kernels/ here
    from internvideo3.kernels.latent_attention import latent_attention_decode

try:  # torch >= 2.2: causal mask aligned to the last key, run by SDPA's fused kernels without materialising it
    from torch.nn.attention.bias import causal_lower_right
except ImportError:
    causal_lower_right = None

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# transformers compatibility: every difference between the supported releases (4.57.3 up to the newest) lives here,
# detected by feature, never by version string. Nothing below this section asks which transformers is installed.
# ----------------------------------------------------------------------------------------------------------------------

# The cache's name in outputs, forward keywords and generate()'s model_kwargs: 5.24 renamed `past_key_values` to
# `cache` (the old name still works there, with a deprecation warning, so our code never uses it on such releases).
CACHE_NAME = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"

# Tied weights: 5.x declares them as {target: source}, 4.x as a list of targets.
_TIED_WEIGHTS_AS_DICT = hasattr(PreTrainedModel, "get_expanded_tied_weights_keys")

# Static latent cache: 5.x's StaticLayer sizes values by their own width (d_r) and counts its tokens in a device tensor
# (`cumulative_length`, what `get_seq_length` returns, written at by `update`). 4.57's gives values the keys' width,
# writes where the `cache_position` of `cache_kwargs` says (callers without it write at 0) and counts non-zero rows;
# `StaticLatentLayer` gives it 5.x's behaviour on those three points.
_STATIC_LAYER_SIZES_VALUES = "value_states" in inspect.signature(StaticLayer.lazy_initialization).parameters
if _STATIC_LAYER_SIZES_VALUES:
    StaticLatentLayer = StaticLayer
else:

    class StaticLatentLayer(StaticLayer):
        """transformers 4.57's `StaticLayer` with 5.x's sizing and length: values [B, 1, max_cache_len, d_r] of their
        own width, the written length in the 0-d long tensor `cumulative_length` on the cache's device."""

        def __init__(self, max_cache_len: int, **kwargs):
            super().__init__(max_cache_len)
            self.cumulative_length = torch.tensor(0, dtype=torch.long)

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None):
            super().lazy_initialization(key_states)
            if value_states is not None and value_states.shape[-1] != self.values.shape[-1]:
                self.values = self.values.new_zeros(*self.values.shape[:-1], value_states.shape[-1])
            self.cumulative_length = self.cumulative_length.to(self.device)
            if not torch.compiler.is_compiling():  # as the parent's buffers: fixed addresses for compiled graphs
                torch._dynamo.mark_static_address(self.values)
                torch._dynamo.mark_static_address(self.cumulative_length)

        def update(self, key_states, value_states, cache_kwargs=None):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            position = torch.arange(key_states.shape[-2], device=self.device) + self.cumulative_length
            self.cumulative_length.add_(key_states.shape[-2])  # in place: its address is static
            return super().update(key_states, value_states, {"cache_position": position})

        def get_seq_length(self) -> int | torch.Tensor:
            return self.cumulative_length if self.is_initialized else 0

        def reset(self) -> None:
            length = self.cumulative_length
            super().reset()  # sets an int `cumulative_length` (its sliding layers'); ours stays the static tensor
            self.cumulative_length = length.zero_()


def keep_static_cache(model: nn.Module, replaced: Cache, cache: Cache) -> None:
    """4.57's generate keeps its static cache on the model (`_cache`) and resets and reuses it in a later call that
    fits; 5.x builds one per call. Where the model keeps the StaticCache that `cache` replaced, it keeps `cache` (a
    later call would otherwise inspect the never-written StaticCache)."""
    if getattr(model, "_cache", None) is replaced:
        model._cache = cache

# Vision tower (transformers' own `Qwen3VLVisionModel`): 5.x returns `BaseModelOutputWithDeepstackFeatures` (patch
# states, merged embeddings, DeepStack features), 4.57 the tuple (merged embeddings, DeepStack features), which
# `InternVideo3VisionModel` wraps in an output of the same fields (4.57 returns no patch states: `last_hidden_state`
# is None there).
# `get_image_features` / `get_video_features` follow the installed Qwen3-VL: 5.x an output object (per-item pooled
# embeddings + DeepStack features, `return_dict=False` for a tuple), 4.57 a tuple (per-item embeddings, DeepStack).
_VISION_FEATURES_AS_OUTPUT = hasattr(modeling_qwen3_vl, "BaseModelOutputWithDeepstackFeatures")
if _VISION_FEATURES_AS_OUTPUT:
    InternVideo3VisionOutput = modeling_qwen3_vl.BaseModelOutputWithDeepstackFeatures
else:

    @dataclass
    class InternVideo3VisionOutput(BaseModelOutputWithPooling):
        """5.x's `BaseModelOutputWithDeepstackFeatures`: `deepstack_features` one [N/4, D_text] per DeepStack layer."""

        deepstack_features: list[torch.FloatTensor] | None = None


try:  # 4.5x and 5.x: the layer wrapper that gradient checkpointing hooks into
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older than anything we support
    GradientCheckpointingLayer = nn.Module

# RoPE init functions (`ROPE_INIT_FUNCTIONS`, SPEC §5.1): 5.x's read `config.rope_parameters` (rope_type, rope_theta,
# factor, ...) and has no "default" entry (each model carries its own: Qwen3-VL's text rotary's
# `compute_default_rope_parameters`); 4.57's read `config.rope_theta` + `config.rope_scaling` and list "default".
_ROPE_READS_ROPE_SCALING = not hasattr(PretrainedConfig, "standardize_rope_params")
_default_rope_parameters = getattr(
    modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding, "compute_default_rope_parameters", None
) or ROPE_INIT_FUNCTIONS.get("default")


def rope_init_config(config: PretrainedConfig, width: int) -> PretrainedConfig:
    """The config transformers' RoPE init functions are given for a rotary of `width` channels: a shallow copy of
    `config` with `head_dim = width` and its own copy of `rope_parameters` (the init functions standardise it in
    place), also as `rope_scaling` where the installed release reads that.

    Every init function of both releases takes the width from `head_dim`; `partial_rotary_factor` (the other way to
    narrow it) moved from the config into `rope_parameters` between releases and goes through `int(head_dim·factor)`,
    so setting the width itself is the one exact form on both.
    """
    rope_config = copy.copy(config)
    rope_config.head_dim = width
    rope_config.rope_parameters = copy.deepcopy(config.rope_parameters)
    if _ROPE_READS_ROPE_SCALING:
        rope_config.rope_scaling = rope_config.rope_parameters
    return rope_config


# Attention weights asked for under SDPA (which never materialises them): transformers warns once in its
# `sdpa_attention_forward`'s words and hands out no weights: 5.x (output capturing) `attentions=()`, 4.57 None, whose
# warning also names `head_mask` (gone in 5.x).
if importlib.util.find_spec("transformers.utils.output_capturing") is not None:
    _SDPA_ATTENTIONS, _SDPA_UNSUPPORTED = (), "`output_attentions=True`"
else:
    _SDPA_ATTENTIONS, _SDPA_UNSUPPORTED = None, "`output_attentions=True` or `head_mask`"

# Hub kernels: every supported release exports `use_kernel_forward_from_hub` (a no-op without the `kernels` package);
# 5.25 kernelizes on load by default (`USE_HUB_KERNELS`), replacing the forward of each class so decorated by the Hub
# layer of its name. Only our text RMSNorm takes one ("RMSNorm", as Qwen3-VL's text RMSNorm: same weight/eps names and
# fp32 formula); attention, MLP and RoPE stay ours (M²LA, interleaved RoPE: no Hub layer has their semantics).
from transformers.integrations import use_kernel_forward_from_hub

# `InternVideo3LatentCache.crop` is inherited on purpose: each release's own `DynamicLayer.crop` defines the argument
# (4.57: the length to keep, negative = drop that many; 5.x: a non-positive number of tokens to drop, 0 drops nothing),
# and transformers' assisted generation calls it with that release's meaning.


def cache_argument(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a forward was given under either name (our forwards accept `cache` and `past_key_values` on every
    supported transformers).

    Raises:
        ValueError: both names were given.
    """
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def with_cache(output_class: type, cache: Cache | None, **fields):
    """Build a transformers output whose cache field is named as the installed release names it."""
    return output_class(**{CACHE_NAME: cache}, **fields)


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class InternVideo3CausalLMOutputWithPast(CausalLMOutputWithPast):
    """Output of both causal-LM heads: transformers' `CausalLMOutputWithPast` plus `rope_deltas`.

    loss: scalar next-token cross entropy when `labels` are given. logits: [B, S, vocab] (or the kept positions).
    cache (`past_key_values` before transformers 5.24; the field follows the installed release): the
    `InternVideo3LatentCache`. hidden_states: tuple of num_layers + 1 tensors [B, S, D] when asked for.
    attentions: tuple of num_layers tensors [B, H, S, T] (eager attention only). rope_deltas: [B, 1] long, MRoPE
    position of the next token minus the (padded) sequence length (SPEC §5.4); None for the text-only head.
    """

    rope_deltas: torch.LongTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Rotary helpers
# ----------------------------------------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last axis (rotate-half RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def deinterleave_rope_channels(x: torch.Tensor) -> torch.Tensor:
    """Pair-interleaved -> rotate-half layout: [x0, x1, ..., x127] -> [x0, x2, ..., x126, x1, x3, ..., x127] (SPEC §5.3).

    The stored q_pe/k_pe weight rows (2j, 2j+1) form the rotation pair of frequency j (DeepSeek-V3 `rope_interleave`).
    """
    *lead, d = x.shape
    return x.view(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate `x` [..., S, d_r] by cos/sin [B, 1, S, d_r] in fp32; returns the rotate-half layout in x's dtype."""
    dtype = x.dtype
    x = x.float()
    if interleaved:
        x = deinterleave_rope_channels(x)
    return (x * cos + rotate_half(x) * sin).to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Weights read outside their module's forward (accelerate offload)
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def onloaded(*modules: nn.Module | None):
    """Context: the parameters of `modules` on their execution device while it lasts.

    accelerate's cpu/disk offload (`device_map` with "cpu" or "disk" entries, `offload_folder`) keeps an offloaded
    module's weights on the meta device and loads them only around that module's own forward; a weight read directly
    (`kv_b_proj.weight`, `q_norm.weight` in the attention) would be a meta tensor. accelerate's `align_module_device`
    loads them as its hook would. Modules without accelerate's hooks are untouched (accelerate is then not imported).

    Raises:
        ImportError: hooked modules with an accelerate older than 1.1 (no `align_module_device`).
    """
    with contextlib.ExitStack() as stack:
        for module in modules:
            if module is not None and hasattr(module, "_hf_hook"):
                try:
                    from accelerate.utils import align_module_device
                except ImportError as error:
                    raise ImportError("a device_map with offload needs accelerate >= 1.1 (align_module_device)") from error
                stack.enter_context(align_module_device(module))
        yield


def reads_weights_of(*names: str):
    """Decorator of a forward that reads the weights of its submodules `names` without calling them: runs it inside
    `onloaded` of those submodules (None entries, e.g. an absent `q_norm`, are skipped)."""

    def decorate(forward):
        @functools.wraps(forward)
        def wrapped(self, *args, **kwargs):
            modules = [getattr(self, name) for name in names]
            # Every decode step runs this: without accelerate's hooks (no offload) call straight through.
            if not any(module is not None and hasattr(module, "_hf_hook") for module in modules):
                return forward(self, *args, **kwargs)
            with onloaded(*modules):
                return forward(self, *args, **kwargs)

        return wrapped

    return decorate


# ----------------------------------------------------------------------------------------------------------------------
# Vision tower (transformers' Qwen3-VL, unchanged: SPEC §6)
# ----------------------------------------------------------------------------------------------------------------------


class InternVideo3VisionModel(modeling_qwen3_vl.Qwen3VLVisionModel):
    """transformers' Qwen3-VL vision tower built from an `InternVideo3VisionConfig` (SPEC §6): Conv3d patch embed,
    learned 48×48 positions bilinearly resampled to each grid, 2-D rotary, ViT blocks attending within each frame group,
    2×2 merger and DeepStack mergers, with Qwen3-VL's key names (`model.visual.*` in the full model).

    forward(pixel_values [N, C·T·P·P] float, grid_thw [n, 3] long) -> `InternVideo3VisionOutput`: `last_hidden_state`
    [N, D_v] patch states before the merger (None on transformers 4.57), `pooler_output` merged embeddings
    [N/4, D_text], `deepstack_features` one [N/4, D_text] per `deepstack_visual_indexes` entry.
    """

    config_class = InternVideo3VisionConfig

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # transformers looks for its attention interface in this file's source; the blocks are Qwen3-VL's, which read
        # `config._attn_implementation` at every call.
        return True

    # transformers 4.57's Qwen3-VL builds its position indices on `pos_embed.weight.device`: a meta tensor when the
    # tower is offloaded ("disk"/"cpu" in a device_map), so that weight is loaded for the whole forward.
    @reads_weights_of("pos_embed")
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> InternVideo3VisionOutput:
        out = super().forward(pixel_values, grid_thw, **kwargs)
        if _VISION_FEATURES_AS_OUTPUT:
            return out
        merged, deepstack = out
        return InternVideo3VisionOutput(pooler_output=merged, deepstack_features=list(deepstack))


# ----------------------------------------------------------------------------------------------------------------------
# Attention functions (one table; eager and SDPA) and the causal + padding mask
# ----------------------------------------------------------------------------------------------------------------------


def eager_attention(
    query, key, value, attention_mask, scaling, is_causal, dropout=0.0, training=False, return_weights=False
):
    """softmax(Q Kᵀ·scale + mask) V in fp32 softmax.

    query [B, H, S, d_qk], key [B, H, T, d_qk], value [B, H, T, d_v]; attention_mask None or bool [B, 1|H, S, T]
    (True = attend). Returns [B, S, H, d_v], and with `return_weights` also the probabilities [B, H, S, T].
    """
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    S, T = query.shape[-2], key.shape[-2]
    if is_causal:
        causal = torch.ones(S, T, dtype=torch.bool, device=query.device).tril(T - S)
        scores = scores.masked_fill(~causal, float("-inf"))
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    out = torch.matmul(probs, value).transpose(1, 2)
    return (out, probs) if return_weights else out


def sdpa_attention(query, key, value, attention_mask, scaling, is_causal, dropout=0.0, training=False):
    """`torch.nn.functional.scaled_dot_product_attention` with the same contract as `eager_attention`.

    M²LA values (d_v = 128) are narrower than queries/keys (d_n + d_r = 256); fused SDPA kernels (flash) need equal
    widths and otherwise fall back to the math kernel, which materialises [H, S, T] scores (measured on CPU, 2K
    tokens: 18x slower, +1.2 GB). Zero-padding V to the key width and slicing the output is exact and keeps them.
    """
    d_v = value.shape[-1]
    if d_v < query.shape[-1]:
        value = F.pad(value, (0, query.shape[-1] - d_v))
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout if training else 0.0,
        is_causal=is_causal and attention_mask is None,
        scale=scaling,
    )
    return out[..., :d_v].transpose(1, 2)


ATTENTION_FUNCTIONS: dict[str, Callable] = {"eager": eager_attention, "sdpa": sdpa_attention}


class AttentionMaskSpec:
    """Causal + padding mask of one forward, built lazily per query block so no [S, T] mask of the whole prompt is
    ever materialised (a 256K-token prefill would need 64 G entries).

    Args:
        attention_mask: None, [B, T] of 0/1 (T = past_len + S; left padding), or an already-built 4-D mask
            [B, 1, S, T] (bool, or additive float where 0 = attend), e.g. from generate() with a static cache.
        query_len: S, past_len: tokens already in the cache: an int, or with `key_len` a 0-d long tensor (a static
            cache's live length, on its device: kept there so that no decode step reads it back to the host).
        cu_seq_lens: packed samples in one row (`cu_seq_lens_q` of transformers' padding-free batches): int [n + 1],
            the cumulative sample lengths from 0 to T; tokens attend causally within their own sample only.
        key_len: the static cache's `max_cache_len` when the attention reads that whole buffer (as transformers'
            static layers are read, so every decode step has the same shapes: one compiled graph); None when the
            keys are the live T = past_len + S tokens.

    Raises:
        ValueError: a 2-D mask whose length is not past_len + S (wider than `key_len` for a static cache);
            `cu_seq_lens` not rising from 0 to T.
    """

    def __init__(
        self,
        attention_mask: torch.Tensor | None,
        query_len: int,
        past_len: int | torch.Tensor,
        cu_seq_lens: torch.Tensor | None = None,
        key_len: int | None = None,
    ):
        self.query_len, self.past_len, self.key_len = query_len, past_len, key_len
        self.static = key_len is not None
        self.total = past_len + query_len
        self.full = None
        self.padding = None
        self.segment = None
        self._whole_query = {}  # device -> the block of all S queries, built once and shared by every layer
        if cu_seq_lens is not None:
            # Packed samples (transformers' padding-free convention): [0, n_1, n_1 + n_2, ..., T] int. Each block
            # compares segment ids, so the boundaries cost T values instead of a [T, T] mask.
            bounds = cu_seq_lens.reshape(-1).long().cpu()
            if bounds.numel() < 2 or bounds[0] != 0 or bounds[-1] != self.total or bool((bounds.diff() < 0).any()):
                raise ValueError(
                    f"cu_seq_lens_q must rise from 0 to the {self.total} packed tokens, got {bounds.tolist()[:8]}"
                )
            self.segment = torch.repeat_interleave(torch.arange(bounds.numel() - 1), bounds.diff())
        if attention_mask is not None and attention_mask.ndim == 4:
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
            width = key_len if self.static else self.total
            self.full = mask[..., :width] if mask.shape[-1] > width else mask
        elif attention_mask is not None and self.static:
            if attention_mask.shape[-1] > key_len:
                raise ValueError(f"attention_mask has {attention_mask.shape[-1]} columns, the static cache {key_len}")
            # Columns past the mask are not written yet; causality hides them as well.
            self.padding = F.pad(attention_mask.bool(), (0, key_len - attention_mask.shape[-1]))
        elif attention_mask is not None:
            if attention_mask.shape[-1] != self.total:
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[-1]} columns, expected past {past_len} + new {query_len}"
                )
            # Whether padding exists is read back from the device (a host sync): worth it for a prompt, whose
            # unpadded blocks then run SDPA's fused causal kernels; a decode step just applies the [B, T] mask.
            if query_len == 1 or not bool(attention_mask.all()):
                self.padding = attention_mask.bool()

    @property
    def is_plain_causal(self) -> bool:
        """No padding, packing or prebuilt mask, and keys ending at the last query (no static buffer): causality
        alone decides, so SDPA's memory-efficient kernels apply."""
        return not self.static and self.full is None and self.padding is None and self.segment is None

    def block(self, start: int, end: int, device, sdpa: bool = False) -> tuple[torch.Tensor | None, bool, int]:
        """Mask for queries [start, end): (bool [B|1, 1, end-start, K] or None, is_causal, K keys visible), on `device`.

        `device` is the attending layer's: under a `device_map` the layers (and so their queries) sit on different
        devices, and accelerate's hooks move tensors only, never this object, so every mask is moved here.

        With `sdpa=True` and plain causality, a block that does not start at key 0 gets torch's lower-right causal
        bias instead of a materialised mask, which SDPA runs without an [S, K] score matrix.

        The block of all S queries (a decode step's) is built once per device and shared by all layers; with a
        static cache K is `key_len` and the mask is computed from the length tensor on the device (no host sync).
        """
        if start == 0 and end == self.query_len:
            cached = self._whole_query.get((device, sdpa))
            if cached is None:
                cached = self._whole_query[(device, sdpa)] = self._block(start, end, device, sdpa)
            return cached
        return self._block(start, end, device, sdpa)

    def _block(self, start: int, end: int, device, sdpa: bool) -> tuple[torch.Tensor | None, bool, int]:
        if self.static:
            keys = self.key_len  # the whole buffer: unwritten keys are masked
        else:
            keys = self.past_len + end  # later keys are causally invisible: callers slice them away
        if sdpa and self.is_plain_causal and end - start > 1 and self.past_len + start > 0 and causal_lower_right:
            return causal_lower_right(end - start, keys), False, keys
        if self.full is not None:
            mask = self.full[:, :, start:end, :keys].to(device)
            return mask | ~mask.any(-1, keepdim=True), False, keys
        if not self.static and self.padding is None and self.segment is None:
            if end - start == 1:
                return None, False, keys
            if self.past_len == 0 and start == 0:
                return None, True, keys  # square causal block: SDPA's is_causal
        past = self.past_len.to(device) if isinstance(self.past_len, torch.Tensor) else self.past_len
        key_pos = torch.arange(keys, device=device)
        query_pos = torch.arange(start, end, device=device) + past
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None]  # [1, 1, q, K]
        if self.padding is not None:
            mask = mask & self.padding[:, None, None, :keys].to(device)
        if self.segment is not None:
            segment = self.segment.to(device)
            mask = mask & (segment[None, :keys] == segment[self.past_len + start : self.past_len + end, None])
        # Left-padding queries see no key: let them see all so no NaN appears; their outputs are never used.
        return mask | ~mask.any(-1, keepdim=True), False, keys


def check_output_attentions(config: PretrainedConfig, output_attentions: bool | None) -> bool:
    """Resolve `output_attentions` against the config, as transformers' models do. Only "eager" attention
    materialises the probabilities; asked for under SDPA, transformers' own one-time warning is logged (the text of its
    `sdpa_attention_forward`) and the text model returns transformers' empty `attentions` (5.x: (), 4.57: None), so
    generic code that asks for attention weights keeps running.
    """
    if output_attentions is None:
        output_attentions = bool(getattr(config, "output_attentions", False))
    if output_attentions and config.get_text_config()._attn_implementation != "eager":
        logger.warning_once(
            f"`sdpa` attention does not support {_SDPA_UNSUPPORTED}."
            " Please set your attention to `eager` if you want any of these features."
        )
    return output_attentions


# ----------------------------------------------------------------------------------------------------------------------
# Text decoder: MRoPE, RMSNorm, M²LA attention, MLP (SPEC §4-§5)
# ----------------------------------------------------------------------------------------------------------------------


class InternVideo3TextRotaryEmbedding(nn.Module):
    """Interleaved MRoPE (SPEC §5.1-5.2) with transformers' RoPE scaling: forward(x, position_ids [3, B, S] (T, H, W)
    or [B, S]) -> cos, sin [B, S, d_r] in fp32 (x gives only the device; `apply_rope` rotates in fp32).

    inv_freq and attention_scaling come from transformers' RoPE init function of `config.rope_parameters["rope_type"]`
    (`ROPE_INIT_FUNCTIONS`: linear, dynamic, yarn, longrope, llama3, ...; "default" is theta ** (-2j / d_r)), applied
    at the RoPE width d_r = qk_rope_head_dim (head_dim with `rope_frequency_planes`) through `rope_init_config`, so
    the numbers equal transformers' Qwen3-VL text rotary of head_dim d_r for the same RoPE parameters; "dynamic" and
    "longrope" update inv_freq per call through transformers' `dynamic_rope_update`. attention_scaling multiplies cos
    and sin, as transformers does. Frequency slot j takes its angle from H if j % 3 == 1 and j < 3·section[1], from W
    if j % 3 == 2 and j < 3·section[2], else from T. Text-only positions (equal rows) reduce to 1-D RoPE.

    `inv_freq` / `original_inv_freq` are non-persistent buffers (transformers' names, which its weight init refills
    after meta-device loading); they stay fp32 when the model is cast to another dtype.
    """

    compute_default_rope_parameters = staticmethod(_default_rope_parameters)

    def __init__(self, config: InternVideo3TextConfig):
        super().__init__()
        # With `rope_frequency_planes` every layer picks its planes out of a RoPE of the source's width head_dim.
        planes = getattr(config, "rope_frequency_planes", None)
        self.dim = config.head_dim if planes is not None else config.qk_rope_head_dim
        self.mrope_section = list(config.mrope_section)
        self.interleaved = config.mrope_interleaved
        # What transformers' `dynamic_rope_update` and weight init read: config, rope_type, the cached lengths.
        self.config = rope_init_config(config, self.dim)
        self.rope_type = config.rope_parameters["rope_type"]
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_init_fn = (  # read by 4.57's `dynamic_rope_update`; 5.x's looks the type up itself
            self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        )
        inv_freq, self.attention_scaling = self.rope_init_fn(self.config, None)  # device: 4.57 requires it
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
        self._axis_on: dict[torch.device, torch.Tensor] = {}  # `axis_of_frequency`, per device

    def _apply(self, fn, *args, **kwargs):
        # Casting the model (`.to(torch.bfloat16)`, `.half()`) would round the frequencies, and with them every angle
        # of a long context: the buffers follow the device only.
        fp32 = {k: v for k, v in self._buffers.items() if v is not None and v.dtype == torch.float32}
        super()._apply(fn, *args, **kwargs)
        for name, value in fp32.items():
            if self._buffers[name].dtype != torch.float32:
                self._buffers[name] = value.to(self._buffers[name].device)
        return self

    def axis_of_frequency(self, device) -> torch.Tensor:
        """[d_r / 2] long: which position axis (0 T, 1 H, 2 W) drives each frequency. Built once per device (a
        boolean-mask write would read its size back from the device at every forward)."""
        axis = self._axis_on.get(device)
        if axis is None:
            j = torch.arange(self.dim // 2)
            axis = torch.zeros_like(j)
            if self.interleaved:
                for a in (1, 2):
                    axis[(j % 3 == a) & (j < 3 * self.mrope_section[a])] = a
            else:  # chunked [TTT..HHH..WWW] (Qwen2-VL style)
                t, h = self.mrope_section[0], self.mrope_section[1]
                axis[t : t + h] = 1
                axis[t + h : t + h + self.mrope_section[2]] = 2
            axis = self._axis_on[device] = axis.to(device)
        return axis

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        device = position_ids.device
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=device, dtype=torch.float)  # [3, B, S, d_r/2]
        axis = self.axis_of_frequency(device)
        freqs = torch.gather(freqs, 0, axis.view(1, 1, 1, -1).expand(1, *freqs.shape[1:]))[0]  # [B, S, d_r/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.attention_scaling == 1.0:
            return emb.cos(), emb.sin()
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, channels: int | None = None) -> torch.Tensor:
    """RMSNorm over the last axis in fp32, as transformers' Qwen3-VL text RMSNorm: weight · x / sqrt(mean(x²) + eps).

    x [..., C] any float dtype; the normalised x is cast back to x's dtype before the weight multiplies it (so the
    result follows torch's promotion of weight and x dtypes). `channels` (default C): the RMS of x[..., :channels]
    scales all C channels and the weight [channels] multiplies only those (a converted Qwen3 q_norm, SPEC §9.4).
    weight None: no weight. The one RMSNorm of this package (`InternVideo3RMSNorm`, the q_norm, the converter).
    """
    dtype = x.dtype
    n = x.shape[-1] if channels is None else channels
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32[..., :n].pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return x32.to(dtype)
    if n == x.shape[-1]:
        return weight * x32.to(dtype)
    return torch.cat((weight * x32[..., :n].to(dtype), x32[..., n:].to(dtype)), dim=-1)


@use_kernel_forward_from_hub("RMSNorm")
class InternVideo3RMSNorm(nn.Module):
    """RMSNorm in fp32: weight · x / sqrt(mean(x²) + eps).

    Decorated as transformers' `Qwen3VLTextRMSNorm` is, so on CUDA with the `kernels` package transformers >= 5.25
    swaps in the same Hub kernel for its forward (`USE_HUB_KERNELS=0` keeps this one)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


class InternVideo3TextMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: InternVideo3TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class InternVideo3TextAttention(nn.Module):
    """M²LA: multi-head latent attention with one shared RoPE key (SPEC §3-§4).

    Weights (checkpoint names are a public contract, SPEC §3):
        q_proj              [H·(d_n+d_r), D] (+bias): per head rows [0:d_n] q_nope, [d_n:] q_pe
        kv_a_proj_with_mqa  [r+d_r, D] (+bias):      rows [0:r] latent c, rows [r:] shared k_pe
        kv_a_layernorm      [r] only if the checkpoint has it (the released model has none)
        kv_b_proj           [H·(d_n+d_v), r]:        per head rows [0:d_n] W_UK, [d_n:] W_UV (no bias: absorption)
        o_proj              [D, H·d_v]

    The cache stores per token only [c (r) | k_pe after RoPE (d_r)] (keys = c [B, 1, T, r], values = k_pe
    [B, 1, T, d_r]). Prefill/training expands K/V; a short query over a longer cache is absorbed (SPEC §4):
    q_lat = q_nope·W_UK, scores = (q_lat·cᵀ + q_pe·k_peᵀ)·scale, o = softmax(scores)·c·W_UV, so past tokens are
    never re-expanded to per-head K/V.
    """

    def __init__(self, config: InternVideo3TextConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.qk_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        self.kv_lora_rank = config.layer_kv_lora_rank(layer_idx)
        self.scaling = config.softmax_scale
        self.rope_interleave = config.rope_interleave
        self.attention_dropout = config.attention_dropout
        self.query_chunk_size = config.attention_query_chunk_size
        H, r = self.num_heads, self.kv_lora_rank

        self.q_proj = nn.Linear(config.hidden_size, H * self.qk_head_dim, bias=config.attention_bias)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, r + self.qk_rope_head_dim, bias=config.attention_bias)
        self.kv_a_layernorm = InternVideo3RMSNorm(r, eps=config.rms_norm_eps) if config.qk_latent_layernorm else None
        self.q_norm = InternVideo3RMSNorm(config.head_dim, eps=config.rms_norm_eps) if config.q_norm else None
        self.k_norm = InternVideo3RMSNorm(config.head_dim, eps=config.rms_norm_eps) if config.k_norm else None
        planes = config.rope_frequency_planes[layer_idx] if config.rope_frequency_planes is not None else None
        # cos/sin arrive at the head_dim RoPE width in rotate-half layout; channels p and p + d_r/2 of this layer's
        # q_pe/k_pe rotate at the frequency of plane planes[p].
        self.rope_index = planes + planes if planes is not None else None
        self._rope_index_on: dict[torch.device, torch.Tensor] = {}  # built once per device, not on every decode step
        self.kv_b_proj = nn.Linear(r, H * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_head_dim, config.hidden_size, bias=False)

        # Absorb while it costs fewer FLOPs than expanding the cache: per query token absorbed attention costs
        # H·T·(2r + d_r) against the expansion's T·r·H·(d_n + d_v) shared by all S queries plus H·T·(d_qk + d_v)
        # per query, so absorb when S < r·(d_n + d_v) / (2r + d_r - d_qk - d_v) (149 for the 8B widths).
        denominator = max(2 * r + self.qk_rope_head_dim - self.qk_head_dim - self.v_head_dim, 1)
        self.absorb_max_query_len = max(1, (r * (self.qk_nope_head_dim + self.v_head_dim)) // denominator)
        # Transient bytes of per-head K/V that one expansion may hold; more heads are processed in groups.
        self.expand_budget_bytes = config.attention_expand_budget_bytes

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [H, d_n, r] and W_UV [H, d_v, r], views of `kv_b_proj.weight` (SPEC §4)."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        return w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]

    @reads_weights_of("kv_b_proj", "q_norm")  # W_UK / W_UV and the expansion weight; the kept q_norm weight
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: AttentionMaskSpec,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, S, D] -> ([B, S, D], attention probabilities [B, H, S, T] when `output_attentions`
        else None); `attention_mask` is the forward's `AttentionMaskSpec`."""
        B, S, _ = hidden_states.shape
        H, r, d_n, d_r = self.num_heads, self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # [B, 1, S, d_r]
        if self.rope_index is not None:
            index = self._rope_index_on.get(cos.device)
            if index is None:
                index = self._rope_index_on[cos.device] = torch.tensor(self.rope_index, device=cos.device)
            cos, sin = cos[..., index], sin[..., index]

        q = self.q_proj(hidden_states).view(B, S, H, self.qk_head_dim)
        if self.q_norm is not None:
            # A converted Qwen3 q_norm kept exact (SPEC §9.4): channels [:head_dim] hold the source query, whose RMS
            # scales the whole head; the converter folded the norm weight into the q_pe rows.
            q = rms_norm(q, self.q_norm.weight, self.q_norm.variance_epsilon, channels=self.q_norm.weight.shape[0])
        q = q.transpose(1, 2)  # [B, H, S, d_n + d_r]
        q_nope, q_pe = q.split([d_n, d_r], dim=-1)  # [B, H, S, d_n], [B, H, S, d_r]
        ckv = self.kv_a_proj_with_mqa(hidden_states)  # [B, S, r + d_r]
        latent, k_pe = ckv.split([r, d_r], dim=-1)  # [B, S, r], [B, S, d_r]
        if self.k_norm is not None:
            # A converted Qwen3 k_norm kept exact (SPEC §9.4): each head_dim block of k_pe is one source KV head's
            # key (pair-interleaved, as the norm weight), normalised before RoPE; the cache stores the result.
            k_pe = self.k_norm(k_pe.unflatten(-1, (-1, self.k_norm.weight.shape[0]))).flatten(-2)
        if self.kv_a_layernorm is not None:
            latent = self.kv_a_layernorm(latent)
        latent = latent.unsqueeze(1)  # [B, 1, S, r]
        q_pe = apply_rope(q_pe, cos, sin, self.rope_interleave)  # [B, H, S, d_r]
        k_pe = apply_rope(k_pe.unsqueeze(1), cos, sin, self.rope_interleave)  # [B, 1, S, d_r]

        if cache is not None:
            # Cache layout (SPEC §4): keys = latent c [B, 1, T, r], values = rotated k_pe [B, 1, T, d_r].
            latent, k_pe = cache.update(latent, k_pe, self.layer_idx)
            if not attention_mask.static and latent.shape[-2] > attention_mask.total:
                # A static cache's whole buffer, over a prompt (its length known): keep the live tokens only.
                # Decode steps read the whole buffer under the mask instead (same shapes every step).
                latent, k_pe = latent[:, :, : attention_mask.total], k_pe[:, :, : attention_mask.total]
        T = latent.shape[-2]

        weights = None
        if T > S and S <= self.absorb_max_query_len and not output_attentions:
            mask, _, _ = attention_mask.block(0, S, hidden_states.device)
            attn_output = self._absorbed(q_nope, q_pe, latent, k_pe, mask)
        else:  # the expanded form is also the one that can hand out probabilities (eager)
            attn_output, weights = self._expanded(q_nope, q_pe, latent, k_pe, attention_mask, output_attentions)
        return self.o_proj(attn_output.reshape(B, S, H * self.v_head_dim)), weights

    def _expanded(self, q_nope, q_pe, latent, k_pe, mask_spec: AttentionMaskSpec, output_attentions: bool = False):
        """Expand c to per-head K/V (prefill/training) and attend. Returns ([B, S, H, d_v], probabilities
        [B, H, S, T] or None).

        Memory stays bounded for long prompts on two axes: queries go in blocks of `attention_query_chunk_size`
        (mask and score memory), and heads go in groups whose expanded K/V fit `expand_budget_bytes` (a chunk of a
        256K-token video over its cache would otherwise expand T·H·(d_n + d_v) values at once, 4 GiB per layer at the
        8B widths). Heads are independent, so grouping them is exact.
        """
        B, H, S, _ = q_nope.shape
        T = latent.shape[-2]
        d_n, d_v = self.qk_nope_head_dim, self.v_head_dim
        # transient values per head and key: kv_b output (d_n + d_v), key (d_qk), value padded to d_qk by SDPA
        per_head = B * T * (d_n + d_v + 2 * self.qk_head_dim) * latent.element_size()
        group = max(1, min(H, self.expand_budget_bytes // max(per_head, 1)))
        weight = self.kv_b_proj.weight.view(H, d_n + d_v, self.kv_lora_rank)  # kv_b_proj has no bias
        outputs, probs = [], []
        for h in range(0, H, group):
            kv = F.linear(latent[:, 0], weight[h : h + group].reshape(-1, self.kv_lora_rank))
            out, p = self._expanded_heads(
                q_nope[:, h : h + group], q_pe[:, h : h + group], kv, k_pe, mask_spec, output_attentions
            )
            outputs.append(out)
            probs.append(p)
        joined = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        return joined, (torch.cat(probs, dim=1) if output_attentions else None)

    def _expanded_heads(self, q_nope, q_pe, kv, k_pe, mask_spec: AttentionMaskSpec, output_attentions=False):
        """Attention of the heads in `q_nope` [B, h, S, d_n] given their expanded `kv` [B, T, h·(d_n + d_v)], in
        query blocks. Returns ([B, S, h, d_v], probabilities [B, h, S, T] or None)."""
        B, H, S, _ = q_nope.shape
        T = kv.shape[1]
        kv = kv.view(B, T, H, self.qk_nope_head_dim + self.v_head_dim).transpose(1, 2)
        k_nope, value = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)  # [B, h, T, d_n], [B, h, T, d_v]
        key = torch.cat((k_nope, k_pe.expand(B, H, T, self.qk_rope_head_dim)), dim=-1)  # [B, h, T, d_n + d_r]
        query = torch.cat((q_nope, q_pe), dim=-1)  # [B, h, S, d_n + d_r]
        attention = ATTENTION_FUNCTIONS.get(self.config._attn_implementation, sdpa_attention)
        sdpa = attention is sdpa_attention
        # SDPA's fused kernels need no score matrix when causality alone masks: then one block is best.
        chunk = S if sdpa and mask_spec.is_plain_causal else self.query_chunk_size
        outputs, probs = [], []
        for start in range(0, S, chunk):
            end = min(S, start + chunk)
            mask, is_causal, keys = mask_spec.block(start, end, query.device, sdpa)
            args = (query[:, :, start:end], key[:, :, :keys], value[:, :, :keys], mask, self.scaling, is_causal)
            if output_attentions:  # eager only (checked where the flag enters); later keys are causally invisible
                out, p = eager_attention(*args, self.attention_dropout, self.training, return_weights=True)
                probs.append(F.pad(p, (0, T - keys)))
            else:
                out = attention(*args, self.attention_dropout, self.training)
            outputs.append(out)
        joined = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return joined, (torch.cat(probs, dim=2) if output_attentions else None)

    def _absorbed(self, q_nope, q_pe, latent, k_pe, attention_mask):
        """Weight-absorbed attention over the latent cache (SPEC §4). Returns [B, S, H, d_v]."""
        w_uk, w_uv = self.absorbed_weights()  # [H, d_n, r], [H, d_v, r]
        # einsum letters: b batch, h head, s query, d per-head width, c latent channel.
        q_lat = torch.einsum("bhsd,hdc->bhsc", q_nope, w_uk)  # [B, H, S, r]
        # Scores accumulate in fp32 in every backend, and o_lat stays fp32 into W_UV: rounding it to bf16 before
        # that product added ~10% to expanded SDPA's bf16 error (tests/test_fast_decode.py).
        compute = torch.promote_types(q_lat.dtype, torch.float32)
        o_lat = latent_attention_decode(  # [B, H, S, r] in `compute`
            q_lat.to(compute), q_pe, latent[:, 0], k_pe[:, 0], self.scaling, attention_mask
        )
        out = torch.einsum("bhsc,hdc->bhsd", o_lat, w_uv.to(compute)).to(q_nope.dtype)  # [B, H, S, d_v]
        return out.transpose(1, 2)


class InternVideo3TextDecoderLayer(GradientCheckpointingLayer):
    """RMSNorm -> M²LA attention -> residual -> RMSNorm -> SwiGLU -> residual."""

    def __init__(self, config: InternVideo3TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = InternVideo3TextAttention(config, layer_idx)
        self.mlp = InternVideo3TextMLP(config)
        self.input_layernorm = InternVideo3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = InternVideo3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, output_attentions=False):
        """hidden_states [B, S, D] -> ([B, S, D], attention probabilities [B, H, S, T] or None)."""
        attn_output, weights = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, cache, output_attentions
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), weights


# ----------------------------------------------------------------------------------------------------------------------
# Latent KV cache
# ----------------------------------------------------------------------------------------------------------------------


class InternVideo3LatentCache(Cache):
    """KV cache holding, per layer and token, only the latent c (r values) and the rotated shared k_pe (d_r values).

    Layout (SPEC §4, §8): one `DynamicLayer` per decoder layer with keys = c [B, 1, T, r] and values = k_pe
    [B, 1, T, d_r]. That is (r + d_r) values per token per layer: 1024 for the 8B model, 73,728 bytes/token in bf16
    over 36 layers, half of Qwen3-VL-8B's GQA cache (2·8·128 per layer, 147,456 bytes/token). Because the layers are
    transformers' own, `crop`, `reorder_cache` (beam search), `batch_select_indices`, `batch_repeat_interleave` and
    offloading work unchanged, with the installed release's meaning: `crop(n)` keeps n tokens on 4.57 and takes a
    non-positive number of tokens to drop on 5.x; `crop(-k)` with k > 0 drops the last k tokens on every release.

    With `max_cache_len` the layers are transformers' `StaticLayer`s instead (`StaticLatentLayer` on 4.57, see the
    compatibility section): pre-allocated [B, 1, max_cache_len, r] and [B, 1, max_cache_len, d_r] buffers written in
    place, the length a device tensor (what `generate(cache_implementation="static")` and `torch.compile` need).

    Args:
        config: an `InternVideo3Config` or `InternVideo3TextConfig` (the number of layers is read from it).
        num_hidden_layers: alternative to `config`.
        offloading: move layers to CPU between uses (transformers' offloading).
        max_cache_len: tokens to pre-allocate (static cache); None for a growing cache.

    Raises:
        ValueError: neither `config` nor `num_hidden_layers`.
    """

    def __init__(
        self,
        config=None,
        num_hidden_layers: int | None = None,
        offloading: bool = False,
        max_cache_len: int | None = None,
        **kwargs,
    ):
        text_config = config.get_text_config() if config is not None else None
        if num_hidden_layers is None:
            if text_config is None:
                raise ValueError("InternVideo3LatentCache needs `config` or `num_hidden_layers`")
            num_hidden_layers = text_config.num_hidden_layers
        if max_cache_len is None:
            layers = [DynamicLayer() for _ in range(num_hidden_layers)]
        else:
            layers = [StaticLatentLayer(max_cache_len=max_cache_len) for _ in range(num_hidden_layers)]
        super().__init__(layers=layers, offloading=offloading)

    def _stored(self):
        for layer in self.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is not None and keys.numel():
                yield keys, values

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds, summed over layers (int, bytes)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._stored())

    def bytes_per_token(self) -> float:
        """Measured cache bytes per token and sequence: nbytes / (batch · cached tokens). 0.0 when empty."""
        tokens = self.get_seq_length()
        stored = list(self._stored())
        if not tokens or not stored:
            return 0.0
        return self.nbytes() / (stored[0][0].shape[0] * tokens)

    def values_per_token_per_layer(self) -> list[int]:
        """Per layer, the values stored per token: r_l + d_r (the layout check of SPEC §4)."""
        return [k.shape[-1] + v.shape[-1] for k, v in self._stored()]


# ----------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ----------------------------------------------------------------------------------------------------------------------


_LM_HEAD_TIE = {"lm_head.weight": "model.language_model.embed_tokens.weight"} if _TIED_WEIGHTS_AS_DICT else ["lm_head.weight"]
_TEXT_LM_HEAD_TIE = {"lm_head.weight": "model.embed_tokens.weight"} if _TIED_WEIGHTS_AS_DICT else ["lm_head.weight"]

# Keys of one M²LA layer whose presence decides the attention modules (SPEC §3).
_ATTENTION_KEY_SUFFIXES = (
    "q_proj.weight",
    "q_proj.bias",
    "kv_a_proj_with_mqa.weight",
    "kv_a_proj_with_mqa.bias",
    "kv_a_layernorm.weight",
    "q_norm.weight",
    "k_norm.weight",
    "kv_b_proj.weight",
    "o_proj.weight",
)


_ATTENTION_KEY_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(.+)$")


def _hub_lookup_errors() -> tuple[type[BaseException], ...]:
    """The failures of a Hub header lookup that only mean "cannot look": offline (mode or network), gated, private or
    missing repo/revision/file, not a safetensors repo. Anything else (a bug, a bad argument) propagates. Names are
    looked up, not imported, as they moved between huggingface_hub 0.x and 1.x (requests -> httpx)."""
    import huggingface_hub.errors as hub_errors

    names = ("OfflineModeIsEnabled", "RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError",
             "EntryNotFoundError", "NotASafetensorsRepoError", "LocalEntryNotFoundError")  # fmt: skip
    errors = [getattr(hub_errors, name) for name in names if hasattr(hub_errors, name)]
    for module, name in (("requests", "ConnectionError"), ("requests", "Timeout"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors) + (ConnectionError, TimeoutError)


def open_safetensors(file: str | os.PathLike, error: type[Exception] = OSError, name: str | None = None):
    """`safetensors.safe_open(file, framework="pt")` (a context manager over the file's header and tensors).

    Raises:
        `error` (default OSError): the file is truncated or corrupt; the message names it as `name` (default: the
            path quoted) and says to fetch it again (safetensors' own message does not name the file).
    """
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(os.fspath(file), framework="pt")
    except (SafetensorError, OSError) as cause:
        raise error(
            f"cannot read safetensors file {repr(os.fspath(file)) if name is None else name}: {cause}; it is "
            f"truncated or corrupt (an interrupted download or copy?): fetch it again"
        ) from cause


def read_checkpoint_shapes(path: str | os.PathLike, **hub_kwargs) -> dict[str, list[int]]:
    """{tensor name: shape} of a safetensors checkpoint, from its headers only (no weights are read).

    `path` is a local folder or a Hub repo id (then `huggingface_hub.get_safetensors_metadata` reads the remote
    headers). Returns {} when no safetensors files can be found (e.g. a `.bin` checkpoint), and, with a
    `UserWarning` saying the check was skipped, when the Hub cannot be asked (offline, `local_files_only`, gated,
    private or missing repo).

    Raises:
        OSError: a local safetensors file is truncated or corrupt (the message names the file).
    """
    path = str(path)
    subfolder = hub_kwargs.get("subfolder") or ""
    folder = os.path.join(path, subfolder)
    if os.path.isdir(folder):
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = [name for name in os.listdir(folder) if name.endswith(".safetensors")]
        shapes = {}
        for name in files:
            with open_safetensors(os.path.join(folder, name)) as f:  # the header is checked on opening
                for key in f.keys():
                    shapes[key] = list(f.get_slice(key).get_shape())
        return shapes
    from huggingface_hub import get_safetensors_metadata

    skipped = (
        f"the config-vs-weights check of {path!r} (attention biases, latent norm, per-layer ranks; SPEC §3) was "
        f"skipped: config.json is trusted as it is"
    )
    if hub_kwargs.get("local_files_only"):
        warnings.warn(f"local_files_only=True: {skipped}", stacklevel=3)
        return {}
    try:
        metadata = get_safetensors_metadata(path, revision=hub_kwargs.get("revision"), token=hub_kwargs.get("token"))
    except _hub_lookup_errors() as error:
        warnings.warn(f"could not read the weight headers from the Hub ({type(error).__name__}: {error}); {skipped}",
                      stacklevel=3)
        return {}
    return {name: list(info.shape) for file in metadata.files_metadata.values() for name, info in file.tensors.items()}


def adapt_text_config_to_checkpoint(text_config: InternVideo3TextConfig, shapes: dict) -> None:
    """Decide attention biases, the latent norm and per-layer ranks from checkpoint keys (SPEC §3 "verify").

    The released `config.json` may say `attention_bias: false` or `qk_latent_layernorm: true` while the weights
    disagree: the weights win. Mutates `text_config`.

    Raises:
        ValueError: layers disagree on which attention tensors exist, or `q_proj`/`kv_b_proj` are missing.
    """
    layers = {}
    for key, shape in shapes.items():
        match = _ATTENTION_KEY_PATTERN.search(key)
        if match and "visual." not in key:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = shape
    if not layers:
        return
    signatures = {i: frozenset(k for k in keys if k in _ATTENTION_KEY_SUFFIXES) for i, keys in layers.items()}
    # The layout most layers share is the reference; name every key a layer lacks or adds relative to it.
    first = Counter(signatures.values()).most_common(1)[0][0]
    odd = [
        f"{kind} layers.{i}.self_attn.{key}"
        for i, s in sorted(signatures.items())
        for kind, keys in (("missing", first - s), ("unexpected", s - first))
        for key in sorted(keys)
    ]
    if odd:
        raise ValueError(f"attention tensors differ between layers: {', '.join(odd)}")
    missing = {"q_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight", "o_proj.weight"} - first
    if missing:
        raise ValueError(f"checkpoint lacks M²LA attention tensors {sorted(missing)} in layer {min(layers)}")
    text_config.attention_bias = "q_proj.bias" in first
    text_config.qk_latent_layernorm = "kv_a_layernorm.weight" in first
    ranks = [layers[i]["kv_a_proj_with_mqa.weight"][0] - text_config.qk_rope_head_dim for i in sorted(layers)]
    if len(ranks) == text_config.num_hidden_layers:
        if len(set(ranks)) == 1:
            text_config.kv_lora_rank, text_config.kv_lora_rank_list = ranks[0], None
        else:
            text_config.kv_lora_rank_list = ranks
    text_config.validate_m2la()


def _loading_info_key(entry) -> str:
    """The key of a `loading_info` entry: a name, or a (name, checkpoint shape, model shape) of a mismatched one."""
    return entry if isinstance(entry, str) else entry[0]


def _decides_m2la_layout(key: str) -> bool:
    """Whether a weight key is one of the text decoder's attention tensors, whose shapes fix the M²LA layout."""
    return _ATTENTION_KEY_PATTERN.search(key) is not None and "visual." not in key


class InternVideo3PreTrainedModel(PreTrainedModel):
    """Base class: weight init, capabilities, and a `from_pretrained` that sizes attention from the checkpoint."""

    config_class = InternVideo3Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVideo3TextDecoderLayer", "Qwen3VLVisionBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = False  # V (128) and Q/K (256) widths differ, and the absorbed path is our own
    _supports_flash_attn_2 = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _supports_cache_class = True
    # The decode step over a static latent cache compiles to one graph with `fullgraph=True` (no graph break, no
    # recompile from step to step: tests/test_fast_decode.py), so generate() may compile it.
    _can_compile_fullgraph = True

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # transformers guesses this by searching the module source for its own attention interface; our attention
        # functions read `config._attn_implementation` at every call, so `set_attn_implementation("eager" | "sdpa")`
        # takes effect at once.
        return True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus: attention biases, the latent norm and per-layer ranks come from the
        checkpoint's keys (SPEC §3), and a missing, unexpected or mismatched key of the M²LA layout (any
        `language_model.layers.{i}.self_attn.*` tensor: q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, their biases
        and norms) raises `ValueError` naming the keys.

        Every other key is handled as transformers handles it for any model: a missing one (e.g. `lm_head.weight`, a
        layernorm weight) is initialized by `_init_weights` and an unexpected one is dropped, both with
        transformers' warning; a mismatched one fails in transformers unless `ignore_mismatched_sizes=True`, which
        re-initializes it. All are reported in the `loading_info` dict (`missing_keys`, `unexpected_keys`,
        `mismatched_keys`) returned with `output_loading_info=True`.

        Raises:
            ValueError: missing, unexpected or mismatched attention keys after loading, or attention tensors that
                differ between layers or lack a projection (`adapt_text_config_to_checkpoint`).
        """
        config = kwargs.pop("config", None)
        hub_keys = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
        hub_kwargs = {k: kwargs[k] for k in hub_keys if k in kwargs}
        # Remote code may hand over a config built from another copy of the config module: accept any config object.
        if not isinstance(config, PretrainedConfig):
            config = cls.config_class.from_pretrained(
                config if config is not None else pretrained_model_name_or_path, **hub_kwargs
            )
        config = copy.deepcopy(config)
        shapes = read_checkpoint_shapes(pretrained_model_name_or_path, **hub_kwargs)
        adapt_text_config_to_checkpoint(config.get_text_config(), shapes)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, output_loading_info=True, **kwargs
        )
        # Attention keys decide the layout (widths, ranks, biases): a model built with another layout than the weights
        # would run with re-initialized attention, so those fail; the rest is transformers' own report.
        problems = {
            kind: sorted(name for name in map(_loading_info_key, info.get(kind) or []) if _decides_m2la_layout(name))
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            raise ValueError(
                f"{cls.__name__}.from_pretrained({pretrained_model_name_or_path!r}): M²LA attention tensors do not fit "
                f"the layout (SPEC §3): {problems}"
            )
        return (model, info) if want_info else model


# ----------------------------------------------------------------------------------------------------------------------
# Text model
# ----------------------------------------------------------------------------------------------------------------------


def text_position_ids(attention_mask, batch, query_len, past_len, device) -> torch.Tensor:
    """1-D positions [B, S] for text: count of real tokens before each one (left padding skips pads). `past_len` an
    int or a 0-d tensor (`cached_length`)."""
    if attention_mask is not None and attention_mask.ndim == 2:
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -query_len:].to(device)
    return (torch.arange(query_len, device=device) + _on(past_len, device))[None].expand(batch, -1)


def _on(length: int | torch.Tensor, device) -> int | torch.Tensor:
    """A cached length (`cached_length`) usable on `device`."""
    return length.to(device) if isinstance(length, torch.Tensor) else length


def cached_length(cache: Cache | None, query_len: int) -> int | torch.Tensor:
    """Tokens in `cache` before this forward's S = `query_len` new ones.

    An int for a growing cache (read off tensor shapes) and for a static cache not yet written. A written static
    cache keeps its length as a 0-d long tensor on its device: for a decode step (S == 1) that tensor is returned (a
    snapshot: the layers' `update` advances the cache's own counter in place), so the step reads no device value on
    the host and compiles to one graph; a prompt or chunk (S > 1) reads it as an int (one host sync per prompt).
    """
    if cache is None:
        return 0
    length = cache.get_seq_length()
    if not isinstance(length, torch.Tensor):
        return length
    return length.clone() if query_len == 1 else int(length)


def static_cache_length(cache: Cache | None, past_len: int | torch.Tensor) -> int | None:
    """`max_cache_len` of a static cache whose length is a tensor (`cached_length` of a decode step): the attention
    then reads the whole buffer under a mask (`AttentionMaskSpec.key_len`); None otherwise."""
    if cache is None or not isinstance(past_len, torch.Tensor):
        return None
    return cache.layers[0].max_cache_len


class InternVideo3TextModel(InternVideo3PreTrainedModel):
    """Token embedding + M²LA decoder layers + final RMSNorm, with DeepStack injection after the first layers.

    forward(input_ids [B, S] | inputs_embeds [B, S, D], attention_mask [B, T], position_ids [3, B, S] | [B, S],
    past_key_values, visual_pos_masks [B, S] bool, deepstack_visual_embeds list of [n_visual, D])
    -> BaseModelOutputWithPast(last_hidden_state [B, S, D], past_key_values, hidden_states).
    """

    config_class = InternVideo3TextConfig
    _no_split_modules = ["InternVideo3TextDecoderLayer"]

    def __init__(self, config: InternVideo3TextConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [InternVideo3TextDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = InternVideo3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InternVideo3TextRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        visual_pos_masks: torch.Tensor | None = None,
        deepstack_visual_embeds: list[torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Runs the decoder. The cache may be passed as `cache` or `past_key_values` on every transformers release.

        Raises:
            ValueError: neither/both of input_ids and inputs_embeds, or both cache names.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        cache = cache_argument(cache, past_key_values)
        output_attentions = check_output_attentions(self.config, output_attentions)
        # Only eager attention hands out probabilities (the request under SDPA was warned about just above).
        layer_attentions = output_attentions and self.config._attn_implementation == "eager"
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = InternVideo3LatentCache(self.config)
        if not use_cache:
            cache = None
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, S, _ = inputs_embeds.shape
        past_len = cached_length(cache, S)
        if position_ids is None:
            position_ids = text_position_ids(attention_mask, B, S, past_len, inputs_embeds.device)
        # Built once per forward, before any layer writes the cache, and shared by all layers.
        mask = AttentionMaskSpec(
            attention_mask, S, past_len, kwargs.get("cu_seq_lens_q"), key_len=static_cache_length(cache, past_len)
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        all_attentions = [] if layer_attentions else None
        for idx, layer in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(hidden_states, position_embeddings, mask, cache, layer_attentions)
            if all_attentions is not None:
                all_attentions.append(weights)
            if deepstack_visual_embeds is not None and idx < len(deepstack_visual_embeds):
                # DeepStack (SPEC §6): add the idx-th visual feature set at visual positions after layer idx.
                # Under a device_map each layer returns on its own device: move the features and positions there.
                hidden_states = hidden_states.clone()
                positions = visual_pos_masks.to(hidden_states.device)
                hidden_states[positions] += deepstack_visual_embeds[idx].to(hidden_states.device, hidden_states.dtype)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return with_cache(
            BaseModelOutputWithPast,
            cache,
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attentions) if layer_attentions else _SDPA_ATTENTIONS if output_attentions else None,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Multimodal model
# ----------------------------------------------------------------------------------------------------------------------


def mrope_position_ids(
    config: PretrainedConfig,
    input_ids: torch.LongTensor,
    image_grid_thw: torch.LongTensor | None = None,
    video_grid_thw: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """3-D MRoPE positions as Qwen3-VL's `get_rope_index` (SPEC §5.4) for `config`, an `InternVideo3Config`.

    Text advances all three axes by one per token; each image, and each video frame group (its own
    `<|vision_start|>…<|vision_end|>` segment, grid (1, h/2, w/2)), is placed at (0, row, col) + offset; the next
    text starts at max + 1. Padding (attention_mask == 0) is skipped and gets position 1.

    Returns:
        position_ids [3, B, S] long, rope_deltas [B, 1] long = max position + 1 - S (S the padded length), so
        decoding continues at cache length + delta.

    Raises:
        ValueError: more image/video placeholder groups than grids.
    """
    m = config.vision_config.spatial_merge_size
    B, S = input_ids.shape
    if attention_mask is None or attention_mask.ndim != 2:
        attention_mask = torch.ones_like(input_ids)
    grids = {config.image_token_id: [], config.video_token_id: []}
    if image_grid_thw is not None:
        grids[config.image_token_id] = [[1, h, w] for t, h, w in image_grid_thw.tolist() for _ in range(t)]
    if video_grid_thw is not None:
        # Timestamps separate video frame groups, so each group is its own t = 1 grid.
        grids[config.video_token_id] = [[1, h, w] for t, h, w in video_grid_thw.tolist() for _ in range(t)]
    cursor = {config.image_token_id: 0, config.video_token_id: 0}
    position_ids = torch.ones(3, B, S, dtype=torch.long, device=input_ids.device)
    deltas = []
    for b in range(B):
        keep = attention_mask[b].bool()
        tokens = input_ids[b][keep].tolist()
        pieces, pos, i = [], 0, 0
        while i < len(tokens):
            token = tokens[i]
            if token in grids:
                if cursor[token] >= len(grids[token]):
                    kind = "image" if token == config.image_token_id else "video"
                    raise ValueError(f"more {kind} placeholder groups than {kind} grids ({len(grids[token])})")
                _, h, w = grids[token][cursor[token]]
                cursor[token] += 1
                gh, gw = h // m, w // m
                rows = torch.arange(gh).view(-1, 1).expand(gh, gw).flatten()
                cols = torch.arange(gw).view(1, -1).expand(gh, gw).flatten()
                pieces.append(torch.stack([torch.zeros_like(rows), rows, cols]) + pos)
                pos += max(gh, gw)
                i += gh * gw
            else:
                j = i
                while j < len(tokens) and tokens[j] not in grids:
                    j += 1
                pieces.append(torch.arange(pos, pos + j - i).view(1, -1).expand(3, -1))
                pos += j - i
                i = j
        positions = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
        position_ids[:, b, keep] = positions.to(input_ids.device)
        deltas.append((int(positions.max()) + 1 if positions.numel() else 0) - S)
    return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


class InternVideo3Model(InternVideo3PreTrainedModel):
    """Vision tower (`visual`) + M²LA text decoder (`language_model`), with placeholder injection and MRoPE positions."""

    def __init__(self, config: InternVideo3Config):
        super().__init__(config)
        self.visual = InternVideo3VisionModel._from_config(config.vision_config)
        self.language_model = InternVideo3TextModel._from_config(config.text_config)
        self.rope_deltas = None  # [B, 1], set at prefill, used while decoding (SPEC §5.4)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.LongTensor, **kwargs):
        """Vision features of videos, in the installed transformers' Qwen3-VL form (see `get_image_features`)."""
        return self._item_features(pixel_values_videos, video_grid_thw, "video", kwargs.get("return_dict"))

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor, **kwargs):
        """Vision features of images, in the installed transformers' Qwen3-VL form.

        pixel_values [N, C·T·P·P], image_grid_thw [n, 3] long. transformers 5.x: an `InternVideo3VisionOutput` with
        `last_hidden_state` [N, D_v], `pooler_output` a tuple of one [n_i, D] per image and `deepstack_features` a
        list of such tuples (`return_dict=False`: its `to_tuple()`); 4.57: (tuple of [n_i, D], list of [N/4, D]).

        Raises:
            ValueError: `image_grid_thw` is missing.
        """
        return self._item_features(pixel_values, image_grid_thw, "image", kwargs.get("return_dict"))

    def _item_features(self, pixels, grid, kind, return_dict):
        out = self._vision_features(pixels, grid, kind)
        sizes = (grid.prod(-1) // self.visual.spatial_merge_size**2).tolist()
        embeds = torch.split(out.pooler_output, sizes)
        if not _VISION_FEATURES_AS_OUTPUT:
            return embeds, out.deepstack_features
        out.pooler_output = embeds
        out.deepstack_features = [torch.split(feature, sizes) for feature in out.deepstack_features]
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()

    def _vision_features(self, pixels, grid, kind) -> InternVideo3VisionOutput:
        if grid is None:
            raise ValueError(f"{kind} pixels need `{kind}_grid_thw` ([n, 3] long, from the processor) to be decoded")
        return self.visual(pixels.to(self.visual.dtype), grid)

    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """`mrope_position_ids` of this model's config (Qwen3-VL's `get_rope_index`, SPEC §5.4)."""
        return mrope_position_ids(self.config, input_ids, image_grid_thw, video_grid_thw, attention_mask)

    def _placeholder_mask(self, input_ids, inputs_embeds, token_id) -> torch.Tensor:
        """[B, S] bool: the `token_id` placeholders, from input_ids or, given only embeddings, where the embedding is
        the placeholder token's (as Qwen3-VL finds them)."""
        if input_ids is not None:
            return input_ids == token_id
        placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == placeholder.to(inputs_embeds.dtype)).all(-1)

    def _inject(self, mask, inputs_embeds, features, kind):
        """Replace the embeddings under `mask` [B, S], in order, by `features` [n, D]."""
        n_tokens, n_features = int(mask.sum()), features.shape[0]
        if n_tokens != n_features:
            raise ValueError(
                f"{kind} placeholder tokens ({n_tokens}) and {kind} features ({n_features}) differ: the prompt must "
                f"hold one <|{kind}_pad|> per merged patch"
            )
        # The vision tower and the placeholder ids may sit on other devices than the embeddings (device_map).
        mask, features = mask.to(inputs_embeds.device), features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask[..., None], features)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Embeds text, injects vision features at placeholders, computes MRoPE positions and runs the decoder.

        Placeholders are found from `input_ids`, or from `inputs_embeds` alone (embeddings equal to the
        `<|image_pad|>` / `<|video_pad|>` embedding). The cache may be passed as `cache` or `past_key_values`.

        Raises:
            ValueError: placeholder/feature count mismatch (names both numbers), pixels without their grid, or
                neither/both of input_ids and inputs_embeds.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        cache = cache_argument(cache, past_key_values)
        use_cache = self.config.text_config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = InternVideo3LatentCache(self.config)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        masks, deepstacks = [], []
        for pixels, grid, token_id, kind in (
            (pixel_values, image_grid_thw, self.config.image_token_id, "image"),
            (pixel_values_videos, video_grid_thw, self.config.video_token_id, "video"),
        ):
            if pixels is None:
                continue
            features = self._vision_features(pixels, grid, kind)
            mask = self._placeholder_mask(input_ids, inputs_embeds, token_id)
            inputs_embeds = self._inject(mask, inputs_embeds, features.pooler_output, kind)
            masks.append((token_id, mask))
            deepstacks.append(features.deepstack_features)
        visual_pos_masks, deepstack_visual_embeds = None, None
        if masks:
            visual_pos_masks = masks[0][1] if len(masks) == 1 else masks[0][1] | masks[1][1]
            if len(masks) == 1:
                deepstack_visual_embeds = deepstacks[0]
            else:  # interleave image and video features in sequence order
                is_image = masks[0][1][visual_pos_masks].to(deepstacks[0][0].device)  # on the vision tower's device
                deepstack_visual_embeds = []
                for image_feat, video_feat in zip(*deepstacks):
                    joint = image_feat.new_zeros(is_image.shape[0], image_feat.shape[-1])
                    joint[is_image] = image_feat.to(joint.dtype)
                    joint[~is_image] = video_feat.to(joint.dtype)
                    deepstack_visual_embeds.append(joint)

        if position_ids is None:
            rope_ids = input_ids
            if rope_ids is None and masks:  # embeddings only: placeholders are all get_rope_index needs to see
                rope_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
                for token_id, mask in masks:
                    rope_ids[mask] = token_id
            position_ids = self._position_ids(
                rope_ids, inputs_embeds, image_grid_thw, video_grid_thw, attention_mask, cache
            )
        # Every call sets the delta from the positions it used: a prefill never keeps an earlier call's delta.
        past_len = cached_length(cache, inputs_embeds.shape[1])
        self.rope_deltas = self._rope_deltas_after(position_ids, attention_mask, _on(past_len, position_ids.device))
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            output_attentions=check_output_attentions(self.config, output_attentions),
            output_hidden_states=self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            visual_pos_masks=visual_pos_masks,
            deepstack_visual_embeds=deepstack_visual_embeds,
            cu_seq_lens_q=kwargs.get("cu_seq_lens_q"),
            return_dict=True,
        )

    def _position_ids(self, input_ids, inputs_embeds, image_grid_thw, video_grid_thw, attention_mask, cache):
        """MRoPE positions [3, B, S] of this chunk (SPEC §5.4).

        Prefill: `get_rope_index` (text positions when there are no token ids). Over a non-empty cache: cache length +
        arange(S) + `rope_deltas`, the cached part's delta; a chunk that holds new image/video placeholders (with
        their grids: the new items only) gets `get_rope_index` of the chunk shifted to start there, which equals the
        positions a prefill of the whole sequence gives them (each segment starts at the previous maximum + 1).
        """
        B, S = inputs_embeds.shape[:2]
        past_len = cached_length(cache, S)
        if isinstance(past_len, torch.Tensor) and (image_grid_thw is not None or video_grid_thw is not None):
            past_len = int(past_len)  # new vision inputs: a prompt's chunk, never a decode step
        mask_2d = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        if isinstance(past_len, torch.Tensor):
            # A static cache's decode step, its length on the device: cache length + delta as below, with no host
            # read; a fresh prompt's single token (a reset cache: length 0) takes no earlier call's delta.
            past_len = past_len.to(inputs_embeds.device)
            fresh = text_position_ids(mask_2d, B, S, past_len, inputs_embeds.device)
            if self.rope_deltas is None:
                return fresh[None].expand(3, -1, -1)
            delta = self.rope_deltas.to(inputs_embeds.device)
            if delta.shape[0] != B:  # beam search / num_return_sequences expanded the batch
                delta = delta.repeat_interleave(B // delta.shape[0], dim=0)
            positions = torch.arange(S, device=inputs_embeds.device)[None] + past_len + delta  # [B, S]
            return torch.where(past_len > 0, positions, fresh)[None].expand(3, -1, -1)
        if past_len == 0 and input_ids is not None:
            return self.get_rope_index(input_ids, image_grid_thw, video_grid_thw, mask_2d)[0]
        if past_len == 0 or self.rope_deltas is None:
            return text_position_ids(mask_2d, B, S, past_len, inputs_embeds.device)[None].expand(3, -1, -1)
        delta = self.rope_deltas.to(inputs_embeds.device)
        if delta.shape[0] != B:  # beam search / num_return_sequences expanded the batch
            delta = delta.repeat_interleave(B // delta.shape[0], dim=0)
        if input_ids is not None and (image_grid_thw is not None or video_grid_thw is not None):
            chunk_mask = mask_2d[:, -S:] if mask_2d is not None else None
            chunk_positions = self.get_rope_index(input_ids, image_grid_thw, video_grid_thw, chunk_mask)[0]
            return chunk_positions + (past_len + delta)[None]
        positions = torch.arange(past_len, past_len + S, device=inputs_embeds.device)[None] + delta  # [B, S]
        return positions[None].expand(3, -1, -1)

    @staticmethod
    def _rope_deltas_after(position_ids, attention_mask, past_len) -> torch.LongTensor:
        """[B, 1]: the position after this chunk's last real token minus the cache + chunk length (SPEC §5.4), so the
        next step continues at its cache length + delta, whichever way the chunk's positions were made."""
        positions = position_ids if position_ids.ndim == 3 else position_ids[None]
        S = positions.shape[-1]
        if attention_mask is not None and attention_mask.ndim == 2:
            positions = positions.masked_fill(~attention_mask[:, -S:].bool().to(positions.device)[None], -1)
        return positions.amax(dim=(0, 2)).long().unsqueeze(1) + 1 - (past_len + S)


# ----------------------------------------------------------------------------------------------------------------------
# Causal-LM heads
# ----------------------------------------------------------------------------------------------------------------------


# Keywords of transformers' ForCausalLMLoss that Trainer (and TRL) pass through a model's forward.
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")
# Sample boundaries of a packed row, named as in transformers' padding-free batches (TRL's collator, flash attention's
# FlashAttentionKwargs); `cu_seq_lens_k` and `max_length_*` only matter to varlen kernels and equal these here.
_PACKING_KWARGS = ("cu_seq_lens_q",)


class InternVideo3CausalLMBase(InternVideo3PreTrainedModel, GenerationMixin):
    """What both heads share: the LM head path (logits_to_keep, transformers' loss with its Trainer arguments, output
    flags from the config) and `generate()` plumbing (the latent cache by default, vision inputs only at prefill).

    Subclasses set `self.model` (whose forward returns `BaseModelOutputWithPast`) and `self.lm_head`.
    """

    # The loss uses `num_items_in_batch` and `shift_labels` from the kwargs (transformers' ForCausalLMLoss), so
    # Trainer must not divide it again by the gradient accumulation steps.
    accepts_loss_kwargs = True

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _head_forward(self, labels, logits_to_keep, model_kwargs: dict, extra_kwargs: dict):
        """Run `self.model(**model_kwargs)`, then the LM head on the kept positions and the loss.

        logits_to_keep: int n > 0 keeps the last n positions, 0 keeps all, a 1-D tensor keeps those indices.
        extra_kwargs: the forward's other keywords; the loss's (`num_items_in_batch`, `shift_labels`, `ignore_index`)
            go to `self.loss_function`, `cu_seq_lens_q` (packed samples, see `AttentionMaskSpec`) to the decoder, the
            rest (generation bookkeeping such as `cache_position`) are unused.
        """
        packing = {k: extra_kwargs[k] for k in _PACKING_KWARGS if extra_kwargs.get(k) is not None}
        outputs = self.model(**model_kwargs, **packing, return_dict=True)
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            keep = slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
        else:
            keep = logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            vocab_size = self.config.get_text_config().vocab_size
            loss_kwargs = {k: extra_kwargs[k] for k in _LOSS_KWARGS if k in extra_kwargs}
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **loss_kwargs)
        return with_cache(
            InternVideo3CausalLMOutputWithPast,
            outputs.get(CACHE_NAME),
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if CACHE_NAME != "cache" and "cache" in model_kwargs:  # our forwards take `cache=` on every release
            model_kwargs[CACHE_NAME] = cache_argument(model_kwargs.pop("cache"), model_kwargs.get(CACHE_NAME))
        user_cache = model_kwargs.get(CACHE_NAME)
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get(CACHE_NAME)
        if user_cache is None and type(cache) is DynamicCache:
            model_kwargs[CACHE_NAME] = InternVideo3LatentCache(
                self.config, offloading=bool(getattr(cache, "offloading", False))
            )
        elif user_cache is None and isinstance(cache, StaticCache):
            # transformers sized per-head K/V buffers; the latent cache needs r + d_r values per token instead.
            model_kwargs[CACHE_NAME] = InternVideo3LatentCache(
                self.config, max_cache_len=max(layer.max_cache_len for layer in cache.layers)
            )
            keep_static_cache(self, cache, model_kwargs[CACHE_NAME])
        return result

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        """transformers' inputs for one step, with MRoPE positions left to `InternVideo3Model.forward` (from
        `rope_deltas`), except on the first step of a continuation of a carried cache that brings the conversation's
        vision inputs (multi-turn chat: the processor re-encodes the whole conversation, so `pixel_values*` and
        `*_grid_thw` hold every item, the cached turns' first). There only the items whose placeholders lie in the
        uncached tokens are passed on to be encoded, and the tail's positions (and `rope_deltas`) come from
        `get_rope_index` over the whole sequence, as Qwen3-VL's `_prepare_position_ids_for_generation` computes them
        when the uncached tokens hold new vision tokens (transformers 5.x); the pixels may also be the uncached items'
        only, with every item's grid (nothing re-patchified, positions still from the whole sequence). Pixels of the
        new items only with their grids only are accepted as well: `InternVideo3Model.forward` then continues from
        the cached `rope_deltas`.

        `inputs_embeds` is named so that `generate(inputs_embeds=...)` is allowed (transformers checks the signature).
        """
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        # MRoPE positions come from rope_deltas in forward, not from generate's 1-D positions.
        model_inputs["position_ids"] = None
        cache = model_inputs.get(CACHE_NAME)
        past_len = cache.get_seq_length() if cache is not None else 0
        if isinstance(past_len, torch.Tensor):  # a written static cache: its length lives on the device
            if all(model_inputs.get(g) is None for g in ("image_grid_thw", "video_grid_thw")):
                return model_inputs  # a decode step: neither check below applies, and reading it would sync
            past_len = int(past_len)
        if past_len > 0:
            self._continue_with_vision_inputs(input_ids, kwargs.get("attention_mask"), past_len, model_inputs)
        else:
            mask = kwargs.get("attention_mask")
            # transformers' generate() checks the last token against pad_token_id, which our configs may not set
            if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[0] > 1 and not bool(mask[:, -1].all()):
                warnings.warn(
                    "A decoder-only architecture is being used, but right-padding was detected! For correct "
                    "generation results, please set `padding_side='left'` when initializing the tokenizer "
                    "(the InternVideo3 processor pads on the left by default).",
                    stacklevel=2,
                )
        return model_inputs

    def _continue_with_vision_inputs(self, input_ids, attention_mask, past_len: int, model_inputs: dict) -> None:
        """A step over a non-empty cache that carries vision inputs (see `prepare_inputs_for_generation`): keep the
        pixels and grids of the items whose placeholders are uncached; given every item's grid and the whole sequence
        in `input_ids`, set the uncached tokens' 3-D positions from `get_rope_index` over the whole sequence.

        transformers 5.24's Qwen3-VL computes these positions the same way, but encodes every pixel it is given: the
        whole conversation's pixels (what its processor returns) fail its placeholder/feature count check, the new
        items' alone run its `get_rope_index` out of grids. Here both work.

        Raises:
            ValueError: a placeholder group straddles the cache boundary, or the pixel rows are neither every item's
                nor the uncached items'.
        """
        items = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))
        if not isinstance(self.model, InternVideo3Model) or all(model_inputs.get(g) is None for _, _, g in items):
            return
        chunk = model_inputs.get("input_ids")
        S = (chunk if chunk is not None else model_inputs["inputs_embeds"]).shape[1]
        if input_ids is None or input_ids.shape[1] != past_len + S:
            return  # only the new tokens were given: forward continues from the cached rope_deltas
        if attention_mask is not None and attention_mask.shape[-1] != input_ids.shape[1]:
            return
        every_grid, all_items = {}, True
        for kind, pixels_key, grid_key in items:
            grid = model_inputs.get(grid_key)
            if grid is None:
                continue
            placeholders = input_ids == getattr(self.config, f"{kind}_token_id")
            if bool((placeholders[:, past_len - 1] & placeholders[:, past_len]).any()):
                raise ValueError(f"a {kind} placeholder group straddles the cached ({past_len}) and the new tokens")
            starts = placeholders & ~F.pad(placeholders[:, :-1], (1, 0), value=False)  # first token of each group
            cached, new = starts[:, :past_len].sum(1).tolist(), starts[:, past_len:].sum(1).tolist()
            groups = grid[:, 0].tolist()  # a grid row of t temporal patches spans t groups (as in get_rope_index)
            if sum(groups) != sum(cached) + sum(new):  # not a grid per item: the new items' only, passed on as given
                all_items = False
                continue
            # Grid rows are in batch order, each sample's items in sequence order: its cached items, then its new ones.
            keep, row = [], 0
            for n_cached, n_new in zip(cached, new):
                for n, is_new in ((n_cached, False), (n_new, True)):
                    while n > 0 and row < len(groups):
                        n, row = n - groups[row], row + 1
                        keep.append(is_new)
            keep = torch.tensor(keep, dtype=torch.bool)
            pixels = model_inputs.get(pixels_key)
            if pixels is not None:
                rows = torch.repeat_interleave(keep, grid.prod(-1).cpu()).to(pixels.device)
                if pixels.shape[0] == rows.shape[0]:  # every item's pixels: keep the uncached items'
                    pixels = pixels[rows]
                elif pixels.shape[0] != int(rows.sum()):  # else the uncached items' only (a chat keeps the others')
                    raise ValueError(
                        f"{pixels_key} has {pixels.shape[0]} rows: neither every item's ({rows.shape[0]}) nor the "
                        f"uncached items' ({int(rows.sum())})"
                    )
                model_inputs[pixels_key] = pixels if bool(keep.any()) else None
            model_inputs[grid_key] = grid[keep.to(grid.device)] if bool(keep.any()) else None
            every_grid[grid_key] = grid
        if all_items:
            position_ids, _ = self.model.get_rope_index(
                input_ids, every_grid.get("image_grid_thw"), every_grid.get("video_grid_thw"), attention_mask
            )
            model_inputs["position_ids"] = position_ids[..., -S:]

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """transformers' update, then drop the vision inputs once a step over the cache has encoded them (every
        release: 4.57 passes them to every step), so that only the first step of a (continued) generation sees
        them. Without a cache every step re-runs the whole sequence and keeps them."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if model_kwargs.get("use_cache", True):
            for key in ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw"):
                model_kwargs.pop(key, None)
        return model_kwargs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """transformers' expansion (beam search, `num_return_sequences`: every batch row `expand_size` times), except
        that pixel rows and grids, which are not batch-first, repeat each sample's own images/videos with it.

        A sample's grids are read off its placeholder runs: a grid of t temporal patches spans t runs (each frame
        group is its own `<|vision_start|>…<|vision_end|>` segment, as in `get_rope_index`).
        """
        visual = {}
        for pixels_key, grid_key, token in (
            ("pixel_values", "image_grid_thw", "image_token_id"),
            ("pixel_values_videos", "video_grid_thw", "video_token_id"),
        ):
            if expand_size == 1 or model_kwargs.get(pixels_key) is None or model_kwargs.get(grid_key) is None:
                continue
            pixels, grid = model_kwargs.pop(pixels_key), model_kwargs.pop(grid_key)
            embeds, token_id = model_kwargs.get("inputs_embeds"), getattr(self.config, token)
            mask = self.model._placeholder_mask(input_ids if embeds is None else None, embeds, token_id)
            runs = (mask & ~F.pad(mask[:, :-1], (1, 0), value=False)).sum(1).tolist()  # [B] placeholder runs
            grids_per_sample, row = [], 0
            for n in runs:
                first = row
                while n > 0 and row < len(grid):
                    n, row = n - int(grid[row, 0]), row + 1
                grids_per_sample.append(row - first)
            grids = grid.split(grids_per_sample)
            visual[grid_key] = torch.cat([g.repeat(expand_size, 1) for g in grids])
            patches = pixels.split([int(g.prod(-1).sum()) for g in grids])
            visual[pixels_key] = torch.cat([p.repeat(expand_size, 1) for p in patches])
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **visual}


class InternVideo3ForConditionalGeneration(InternVideo3CausalLMBase, GenerationMixin):
    """InternVideo3 with its (untied) LM head: video/image/text in, next-token logits out; `generate()` ready.

    Checkpoint keys: `model.visual.*`, `model.language_model.*`, `lm_head.weight` (SPEC §3).
    """

    _tied_weights_keys = _LM_HEAD_TIE

    def __init__(self, config: InternVideo3Config):
        super().__init__(config)
        self.model = InternVideo3Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def visual(self):
        return self.model.visual

    @property
    def language_model(self):
        return self.model.language_model

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.LongTensor, **kwargs):
        """See `InternVideo3Model.get_video_features`."""
        return self.model.get_video_features(pixel_values_videos, video_grid_thw, **kwargs)

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor, **kwargs):
        """See `InternVideo3Model.get_image_features`."""
        return self.model.get_image_features(pixel_values, image_grid_thw, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> InternVideo3CausalLMOutputWithPast:
        """input_ids [B, S] | inputs_embeds [B, S, D], attention_mask [B, T], pixel_values_videos [N, 1536],
        video_grid_thw [n, 3] (and the image equivalents) -> logits [B, S, vocab] (the positions `logits_to_keep`
        selects), loss when labels [B, S] are given (`num_items_in_batch`, `shift_labels`, `ignore_index` are
        honoured as by transformers' ForCausalLMLoss). The cache may be passed as `cache` or `past_key_values`;
        `return_dict=False` or `config.return_dict=False` returns a tuple.
        """
        model_kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache_argument(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            use_cache=use_cache,
            output_attentions=check_output_attentions(self.config, output_attentions),
            output_hidden_states=self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        )
        out = self._head_forward(labels, logits_to_keep, model_kwargs, kwargs)
        out.rope_deltas = self.model.rope_deltas
        return out


class InternVideo3TextForCausalLM(InternVideo3CausalLMBase, GenerationMixin):
    """Text-only M²LA causal LM (converted Qwen3 / Qwen2 / Llama sources, SPEC §9): keys `model.*`, `lm_head.weight`."""

    config_class = InternVideo3TextConfig
    _tied_weights_keys = _TEXT_LM_HEAD_TIE
    _no_split_modules = ["InternVideo3TextDecoderLayer"]

    def __init__(self, config: InternVideo3TextConfig):
        super().__init__(config)
        self.model = InternVideo3TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> InternVideo3CausalLMOutputWithPast:
        """input_ids [B, S] | inputs_embeds [B, S, D], attention_mask [B, T] -> logits [B, S, vocab] (the positions
        `logits_to_keep` selects); loss when labels are given, as `InternVideo3ForConditionalGeneration.forward`."""
        model_kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache_argument(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return self._head_forward(labels, logits_to_keep, model_kwargs, kwargs)


__all__ = [
    "InternVideo3CausalLMBase",
    "InternVideo3ForConditionalGeneration",
    "InternVideo3LatentCache",
    "InternVideo3Model",
    "InternVideo3PreTrainedModel",
    "InternVideo3TextForCausalLM",
    "InternVideo3TextModel",
    "InternVideo3VisionModel",
]
