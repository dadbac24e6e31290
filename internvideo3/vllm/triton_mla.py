"""CUDA MLA backend for the plugin: vLLM's `TRITON_MLA` for any latent width (ours: r + d_r = 896 + 128 = 1024).

On CUDA vLLM picks the MLA backend by validating its candidates in priority order (vllm/platforms/cuda.py,
`_get_backend_priorities`): FlashAttention MLA takes 576 only, FlashMLA / FlashInfer MLA / CUTLASS MLA inherit
`MLACommonBackend`'s 320/512/576, and `TRITON_MLA` takes any head size (block sizes a multiple of 16), so it is the one
chosen for our layers, with no setting. Its decode, `decode_attention_fwd(..., is_mla=True)`, reads the paged latent
cache through vLLM's block table (rounding r and d_r up to powers of two with masked loads: 1024 and 128 for ours) and
never expands past tokens to per-head K/V; its prefill is vLLM's MLA prefill (FlashAttention varlen over
`kv_b_proj`-expanded keys, qk head 256, v head 128 at the 8B layout). One thing stopped it for our width: the
metadata's head-size check (`mla_metadata`). This subclass swaps only the metadata class; everything else, and any
other MLA model in the process, runs vLLM's code unchanged (for 320/512/576 the check would have passed anyway).

The decode kernel's arithmetic for our widths is tested on CPU under Triton's interpreter (tests/test_vllm.py); the
backend itself runs only on a CUDA machine (not tested here: no GPU was lent).
"""

from __future__ import annotations

from vllm.v1.attention.backends.mla.triton_mla import TritonMLABackend, TritonMLAMetadataBuilder

from .mla_metadata import LatentMLAMetadata


class LatentTritonMLAMetadataBuilder(TritonMLAMetadataBuilder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # TritonMLAMetadataBuilder takes no `metadata_cls`
        self.metadata_cls = LatentMLAMetadata


class LatentTritonMLABackend(TritonMLABackend):
    @staticmethod
    def get_builder_cls():
        return LatentTritonMLAMetadataBuilder
