"""CPU MLA backend for any latent width r + d_r (ours: 896 + 128 = 1024; 48 in the small checkpoint).

vLLM's `CPUMLABackend` decodes with `torch.ops._C.mla_decode_kvcache`, compiled for 576 = 512 + 64 only, and
`MLACommonMetadata.__post_init__` accepts head sizes 320/512/576 only. This subclass keeps everything else of vLLM's
CPU MLA (prefill with `kv_b_proj` expansion, the cache write, the scheduler's decode/prefill split) and replaces only
the absorbed decode for other widths with a paged gather + fp32 softmax over the latent cache (SPEC §4: scores =
(q_lat·cᵀ + q_pe·k_peᵀ)·scale, o_lat = softmax(scores)·c). For 576 it uses the native kernel as before.
`FusedSDPAMLAPrefillBackend` (registered as vLLM's `CPU` MLA prefill backend) runs that prefill's per-request causal
attention through PyTorch's fused SDPA.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadataBuilder
from vllm.v1.attention.backends.mla.cpu_mla import CPUMLABackend, CPUMLAImpl
from vllm.v1.attention.backends.mla.prefill.cpu_sdpa import CPUSDPAMLAPrefillBackend
from vllm.v1.attention.backends.mla.prefill.zen_cpu_sdpa import ZenCPUSDPAMLAPrefillBackend

from .mla_metadata import LatentMLAMetadata

NATIVE_HEAD_SIZE = 576


class LatentMLAMetadataBuilder(MLACommonMetadataBuilder):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("metadata_cls", LatentMLAMetadata)
        super().__init__(*args, **kwargs)


class LatentCPUMLABackend(CPUMLABackend):
    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return []  # any

    @staticmethod
    def get_builder_cls():
        return LatentMLAMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return LatentCPUMLAImpl


class LatentCPUMLAImpl(CPUMLAImpl):
    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        """q [N, H, r + d_r] (or (q_lat [N, H, r], q_pe [N, H, d_r])), cache [blocks, block_size, r + d_r] ->
        (o_lat [N, H, r], None); one query token per decode request."""
        if self.kv_lora_rank + self.qk_rope_head_dim == NATIVE_HEAD_SIZE:
            return super().forward_mqa(q, kv_c_and_k_pe_cache, attn_metadata, layer)
        decode = attn_metadata.decode
        if isinstance(q, tuple):
            q = torch.cat(q, dim=-1)
        n = q.shape[0]
        seq_lens = decode.seq_lens.tolist()
        if n != len(seq_lens):
            raise NotImplementedError(f"CPU latent MLA decode takes one query per request ({n} for {len(seq_lens)})")
        block_size = kv_c_and_k_pe_cache.shape[1]
        width = kv_c_and_k_pe_cache.shape[-1]
        out = q.new_empty(n, q.shape[1], self.kv_lora_rank)
        for i, length in enumerate(seq_lens):
            blocks = decode.block_table[i, : -(-length // block_size)].long()
            kv = kv_c_and_k_pe_cache[blocks].reshape(-1, width)[:length].float()  # [T, r + d_r]
            scores = (q[i].float() @ kv.T) * self.scale  # [H, T]
            out[i] = (torch.softmax(scores, dim=-1) @ kv[:, : self.kv_lora_rank]).to(out.dtype)
        return out, None


class FusedSDPAMLAPrefillBackend(CPUSDPAMLAPrefillBackend):
    """vLLM's CPU MLA prefill (`CPU_SDPA_MLA`) with each request's causal attention in PyTorch's fused
    `scaled_dot_product_attention` instead of explicit fp32 scores, a [S, S] boolean mask and a softmax: the same
    attention without the [H, S, S] tensors (268 MB per layer for one 4K prompt at 4 heads; vLLM calls its backend
    "reference-quality", module docstring of vllm/v1/attention/backends/mla/cpu_mla.py). Inputs are cast to fp32 as
    vLLM's does; V is zero-padded to the query head size (d_n + d_r) so the fused kernel takes it, and the padding
    is sliced off. Calls that need the log-sum-exp (prefix / chunked context merges; vLLM-CPU turns both off for MLA)
    keep vLLM's implementation."""

    def _ragged_sdpa(self, q, k, v, q_cu_seq_lens, kv_cu_seq_lens, causal, return_softmax_lse):
        if return_softmax_lse:
            return super()._ragged_sdpa(q, k, v, q_cu_seq_lens, kv_cu_seq_lens, causal, return_softmax_lse)
        starts_q, starts_kv = q_cu_seq_lens.tolist(), kv_cu_seq_lens.tolist()  # one host read per call
        out = []
        for (q0, q1), (k0, k1) in zip(zip(starts_q, starts_q[1:]), zip(starts_kv, starts_kv[1:])):
            # vLLM's own [S, H, D] -> [1, H, S, D] layout with V padded to the query width (its Zen backend's)
            q_r, k_r, v_r, d_v = ZenCPUSDPAMLAPrefillBackend._sdpa_layout(
                *(t.float() for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
            )
            o = torch.nn.functional.scaled_dot_product_attention(q_r, k_r, v_r, is_causal=causal, scale=self.scale)
            out.append(o[0].transpose(0, 1)[..., :d_v].to(v.dtype))  # [S, H, d_v]
        return torch.cat(out, dim=0)
