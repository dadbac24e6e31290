"""Latent attention kernels (SPEC §4, §10): the torch path against naive per-head attention, the Triton decode kernel
against the torch path under TRITON_INTERPRET=1, the dispatcher, and torch.compile over the static latent cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from internvideo3.kernels.latent_attention import absorbed_attention_torch, latent_attention_decode, select_backend

# Run in a subprocess: TRITON_INTERPRET must be set before `triton.jit` decorates the kernels, and must not leak into
# other test modules of the same session. Cases: (B, H, S, r, d_r, T, dtype, mask, num_splits); T covers 1, lengths
# that are not multiples of the 16/32-token blocks, and splits with no visible key (left padding); masks are key
# padding ("pad"), left padding of 40 keys ("left"), additive ("add") and per-query causal for S > 1 ("causal").
# 896 + 128 (the 8B widths) runs once at a short length: the interpreter executes every block in numpy.
INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["INTERNVIDEO3_LATENT_BACKEND"] = "triton"
    import torch
    from internvideo3.kernels.latent_attention import (
        absorbed_attention_torch, absorbed_attention_triton, latent_attention_decode,
    )

    CASES = [
        (1, 4, 1, 32, 16, 1, "float32", None, None),
        (1, 4, 1, 32, 16, 45, "float32", None, 3),
        (3, 4, 1, 32, 16, 45, "float32", "pad", 2),
        (3, 4, 1, 32, 16, 45, "float32", "left", 3),
        (3, 4, 1, 96, 64, 100, "float32", "pad", None),
        (1, 8, 1, 96, 64, 33, "float32", "add", 2),
        (2, 4, 3, 32, 16, 20, "float32", "causal", 2),
        (3, 4, 1, 32, 16, 45, "bfloat16", "pad", 2),
        (1, 4, 1, 96, 16, 77, "bfloat16", None, None),
        (2, 4, 1, 32, 64, 50, "float16", "pad", 2),
        (1, 4, 1, 80, 48, 45, "float32", "pad", 2),  # a converter's wider RoPE key: d_r = 48, not a power of two
        (1, 32, 1, 896, 128, 40, "bfloat16", "pad", 2),
    ]

    def mask_for(kind, B, S, T, g):
        if kind is None:
            return None
        if kind == "causal":  # query s of S sees keys up to T - S + s
            return (torch.arange(T)[None, :] <= torch.arange(T - S, T)[:, None])[None, None].expand(B, 1, S, T)
        keep = torch.rand(B, 1, 1, T, generator=g) > 0.3
        if kind == "left":
            keep[..., :40] = False
        keep[..., -1] = True  # every query sees a key (the model guarantees it)
        return torch.zeros(B, 1, 1, T).masked_fill(~keep, float("-inf")) if kind == "add" else keep

    g = torch.Generator().manual_seed(0)
    results = []
    for B, H, S, r, d_r, T, dtype, kind, splits in CASES:
        dt = getattr(torch, dtype)
        q_lat = torch.randn(B, S, H, r, generator=g).to(dt).transpose(1, 2)  # strided, as from the einsum
        q_pe = torch.randn(B, H, S, d_r, generator=g).to(dt)
        ckv = torch.randn(B, T + 5, r, generator=g).to(dt)[:, :T]  # a view into a longer buffer (static cache)
        k_pe = torch.randn(B, T, d_r, generator=g).to(dt)
        mask = mask_for(kind, B, S, T, g)
        # reference: the torch path in float64 on the same (already rounded) inputs; the torch path in the case's own
        # dtype is reported beside it (in bf16 it rounds the scores to bf16, so it is the less exact of the two)
        expected = absorbed_attention_torch(*(t.double() for t in (q_lat, q_pe, ckv, k_pe)), 0.125, mask)
        same_dtype = absorbed_attention_torch(q_lat, q_pe, ckv, k_pe, 0.125, mask)
        got = absorbed_attention_triton(q_lat, q_pe, ckv, k_pe, 0.125, mask, num_splits=splits)
        via_dispatch = latent_attention_decode(q_lat, q_pe, ckv, k_pe, 0.125, mask)  # forced by the env var
        results.append(dict(
            case=[B, H, S, r, d_r, T, dtype, kind, splits], dtype=str(got.dtype), shape=list(got.shape),
            err=(got.double() - expected).abs().max().item(), scale=expected.abs().max().item(),
            dispatch_err=(via_dispatch.double() - expected).abs().max().item(),
            torch_err=(same_dtype.double() - expected).abs().max().item(),
        ))
    print(json.dumps(results))
    """
)
TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 3e-2}  # absolute, on outputs of magnitude ~1-3


@pytest.fixture(scope="module")
def interpreter_results():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETER_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_triton_kernel_matches_torch_under_interpreter(interpreter_results):
    """The split-K Triton kernel equals the torch path for every width, length, batch, mask, split count and dtype;
    the dispatcher forced to "triton" runs the same kernel on CPU tensors."""
    assert len(interpreter_results) == 12
    for row in interpreter_results:
        B, H, S, r, d_r, T, dtype, kind, splits = row["case"]
        assert row["shape"] == [B, H, S, r] and row["dtype"] == f"torch.{dtype}", row
        assert row["err"] <= TOLERANCE[dtype], row
        assert row["scale"] > 0.1, row  # a non-trivial output, so the tolerance means something
        assert row["dispatch_err"] <= TOLERANCE[dtype], row  # default split count
        assert row["torch_err"] <= TOLERANCE[dtype] * 2, row  # the CPU path in the same dtype


def naive_expanded_attention(q_nope, q_pe, c, k_pe, w_uk, w_uv, scale, mask):
    """Per-head K = [W_UK c ; k_pe], V = W_UV c, then plain softmax attention: what absorption must equal (SPEC §4)."""
    B, H, S, _ = q_nope.shape
    T = c.shape[1]
    k_nope = torch.einsum("hdc,btc->bhtd", w_uk, c)  # [B, H, T, d_n]
    value = torch.einsum("hdc,btc->bhtd", w_uv, c)  # [B, H, T, d_v]
    key = torch.cat([k_nope, k_pe[:, None].expand(B, H, T, -1)], dim=-1)
    scores = torch.cat([q_nope, q_pe], dim=-1) @ key.transpose(-1, -2) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def test_torch_path_equals_naive_expanded_attention():
    """Absorbed decode (q_lat = q_nope·W_UK over c, then ·W_UV) equals attention with per-head K/V re-expanded from
    the latent, with a key-padding mask, in fp64 so only the algebra is tested."""
    g = torch.Generator().manual_seed(1)
    B, H, S, T, r, d_n, d_r, d_v = 3, 4, 2, 29, 24, 8, 6, 10
    q_nope, q_pe = torch.randn(B, H, S, d_n, generator=g), torch.randn(B, H, S, d_r, generator=g)
    c, k_pe = torch.randn(B, T, r, generator=g), torch.randn(B, T, d_r, generator=g)
    w_uk, w_uv = torch.randn(H, d_n, r, generator=g) / r**0.5, torch.randn(H, d_v, r, generator=g) / r**0.5
    mask = torch.rand(B, 1, 1, T, generator=g) > 0.4
    mask[..., 0] = True
    q_nope, q_pe, c, k_pe, w_uk, w_uv = (t.double() for t in (q_nope, q_pe, c, k_pe, w_uk, w_uv))
    q_lat = torch.einsum("bhsd,hdc->bhsc", q_nope, w_uk)
    o_lat = absorbed_attention_torch(q_lat, q_pe, c, k_pe, 0.3, mask)
    absorbed = torch.einsum("bhsc,hdc->bhsd", o_lat, w_uv)
    expected = naive_expanded_attention(q_nope, q_pe, c, k_pe, w_uk, w_uv, 0.3, mask)
    torch.testing.assert_close(absorbed, expected, rtol=1e-10, atol=1e-10)
    # an additive mask with -inf where the bool mask is False is the same attention
    additive = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(absorbed_attention_torch(q_lat, q_pe, c, k_pe, 0.3, additive), o_lat)


def test_dispatcher_uses_torch_on_cpu(monkeypatch):
    """CPU tensors go to the torch path (also when asked for "auto"); the env var and argument are validated, and
    forcing Triton on CPU outside the interpreter fails with a clear error, never silently."""
    import internvideo3.kernels.latent_attention as latent

    g = torch.Generator().manual_seed(2)
    q_lat, q_pe = torch.randn(2, 4, 1, 32, generator=g), torch.randn(2, 4, 1, 16, generator=g)
    ckv, k_pe = torch.randn(2, 9, 32, generator=g), torch.randn(2, 9, 16, generator=g)
    monkeypatch.delenv(latent.BACKEND_ENV, raising=False)
    assert select_backend(q_lat) == "torch" and select_backend(q_lat, "auto") == "torch"
    expected = absorbed_attention_torch(q_lat, q_pe, ckv, k_pe, 0.2)
    assert torch.equal(latent_attention_decode(q_lat, q_pe, ckv, k_pe, 0.2), expected)
    monkeypatch.setenv(latent.BACKEND_ENV, "torch")
    assert torch.equal(latent_attention_decode(q_lat, q_pe, ckv, k_pe, 0.2), expected)
    monkeypatch.setenv(latent.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="unknown latent attention backend 'cuda'"):
        latent_attention_decode(q_lat, q_pe, ckv, k_pe, 0.2)
    monkeypatch.delenv(latent.BACKEND_ENV)
    if latent.triton is None:
        with pytest.raises(RuntimeError, match="needs the `triton` package"):
            latent_attention_decode(q_lat, q_pe, ckv, k_pe, 0.2, backend="triton")
    elif not latent.INTERPRETED:
        with pytest.raises(RuntimeError, match="runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1"):
            latent_attention_decode(q_lat, q_pe, ckv, k_pe, 0.2, backend="triton")


def test_compiled_static_cache_generation_matches_eager():
    """generate(cache_implementation="static") with the forward compiled by torch.compile gives eager's greedy tokens
    and scores, and compiles graphs (not a silent eager run). Backend aot_eager by default: dynamo capture and AOT
    functionalization of the in-place cache writes, in ~20 s; inductor's C++ codegen takes ~85 s on a 2-core CPU
    (INTERNVIDEO3_COMPILE_BACKEND=inductor runs it)."""
    from transformers import CompileConfig

    import torch._dynamo
    from torch._dynamo.utils import counters

    from internvideo3.convert.small_checkpoint import small_model

    model = small_model(seed=0).float().eval()
    pad = model.config.text_config.pad_token_id or 151643
    input_ids = torch.tensor([[pad, pad, pad, 101, 102, 103, 104], [201, 202, 203, 204, 205, 206, 207]])
    kwargs = dict(
        input_ids=input_ids, attention_mask=(input_ids != pad).long(), max_new_tokens=4, do_sample=False,
        cache_implementation="static", return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    config = CompileConfig(backend=os.environ.get("INTERNVIDEO3_COMPILE_BACKEND", "aot_eager"), mode="default")
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told (its testing flag)
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    try:
        with torch.no_grad():
            eager = model.generate(**kwargs)
            compiled = model.generate(**kwargs, compile_config=config)
        assert counters["stats"]["unique_graphs"] > graphs_before
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(compiled.scores), torch.stack(eager.scores), rtol=1e-4, atol=1e-4)
