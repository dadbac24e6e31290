"""CPU MLA backend for any latent width r + d_r (ours: 896 + 128 = 1024; 48 in the small checkpoint).

vLLM's `CPUMLABackend` decodes with `torch.ops._C.mla_decode_kvcache`, compiled for 576 = 512 + 64 only, and
`MLACommonMetadata.__post_init__` accepts head sizes 320/512/576 only. This subclass keeps everything else of vLLM's
CPU MLA (prefill through vLLM's CPU SDPA MLA prefill with `kv_b_proj` expansion, the cache write, the scheduler's
decode/prefill split) and replaces only the absorbed decode for other widths with a paged gather + fp32 softmax over
the latent cache (SPEC §4: scores = (q_lat·cᵀ + q_pe·k_peᵀ)·scale, o_lat = softmax(scores)·c). For 576 it uses the
native kernel as before.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadataBuilder
from vllm.v1.attention.backends.mla.cpu_mla import CPUMLABackend, CPUMLAImpl

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
