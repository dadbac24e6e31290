"""The fast decode paths (issue 26): a decode step compiled with `fullgraph=True` over the static latent cache stays one
graph, no decode step forces a host sync, and absorbed decode keeps its scores in fp32 in every path (SPEC §4, §10).

Compilation uses the "eager" backend: dynamo's graph capture (breaks, guards, recompiles) is what is under test, and
it is the same whichever backend runs the graph; inductor's C++ codegen would cost minutes on a 2-core CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import modeling_internvideo3 as modeling
from test_modeling import video_batch

# Ops that copy a device value to the host (a CUDA stream sync): `.item()`, `int()` / `float()` / `bool()` of a
# tensor (`_local_scalar_dense`, `is_nonzero`), boolean-mask indexing and `nonzero` (output size read back),
# `equal` / `allclose` (a Python bool).
SYNC_OPS = {
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_static",
    "aten::masked_select", "aten::equal", "aten::allclose", "aten::tolist",
}  # fmt: skip


def text_prompt():
    """Two left-padded text prompts (the padding path of the mask is exercised)."""
    pad = 151643
    input_ids = torch.tensor([[pad, pad, pad, 101, 102, 103, 104], [201, 202, 203, 204, 205, 206, 207]])
    return dict(input_ids=input_ids, attention_mask=(input_ids != pad).long())


def compile_config(**overrides):
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, backend="eager", mode="default", **overrides)
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told (its testing flag)
    return config


@pytest.mark.parametrize("prompt", ["text", "video"])
def test_compiled_static_decode_is_one_graph(model, prompt):
    """generate(cache_implementation="static") with the decode step compiled `fullgraph=True` over 32 decode steps:
    no graph break, one graph (no recompile after the first compiled step), and the eager greedy tokens."""
    from torch._dynamo.utils import counters

    batch = text_prompt() if prompt == "text" else video_batch()
    kwargs = dict(**batch, max_new_tokens=33, min_new_tokens=33, do_sample=False, cache_implementation="static")
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.no_grad():
            eager = model.generate(**kwargs, disable_compile=True)
            assert counters["stats"]["unique_graphs"] == 0
            compiled = model.generate(**kwargs, compile_config=compile_config())
        # the prefill runs uncompiled; the first decode step compiles the one graph all 32 steps run
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()
    assert compiled.shape[1] == batch["input_ids"].shape[1] + 33
    assert torch.equal(compiled, eager)
    assert model._can_compile_fullgraph  # set because the above holds


def test_compiled_manual_decode_loop_is_one_graph(model):
    """The decode step as a user compiles it: `torch.compile(model, fullgraph=True)` over a static
    `InternVideo3LatentCache`, called with the 2-D mask growing by one column per step, would recompile at each new
    width; with the mask at the cache's full length (as transformers' static layers read it) one graph serves all 32
    steps, and tokens equal eager's."""
    from torch._dynamo.utils import counters

    batch = text_prompt()
    B, P = batch["input_ids"].shape
    length = P + 33

    def decode(forward):
        cache = modeling.InternVideo3LatentCache(model.config, max_cache_len=length)
        mask = F.pad(batch["attention_mask"], (0, length - P))
        logits = model(**batch, cache=cache, use_cache=True).logits[:, -1]
        tokens = []
        for i in range(32):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
            mask[:, P + i] = 1
            logits = forward(input_ids=token, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]
        return torch.cat(tokens, 1)

    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.no_grad():
            eager = decode(model)
            compiled = decode(torch.compile(model, fullgraph=True, backend="eager"))
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled, eager)


def profile_decode_step(model, generate_kwargs, step: int = 3):
    """The aten ops that decode step `step` of `model.generate(**generate_kwargs)` ran (the model's forward only: what
    generate does around it is transformers'), as the profiler's event names."""
    events, profiler, calls = [], [], [0]

    def start(module, args, kwargs):
        calls[0] += 1
        if calls[0] == step + 1:
            profiler.append(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))
            profiler[0].__enter__()

    def stop(module, args, kwargs, output):
        if calls[0] == step + 1:
            profiler[0].__exit__(None, None, None)
            events.extend(event.name for event in profiler[0].events())

    handles = [
        model.register_forward_pre_hook(start, with_kwargs=True),
        model.register_forward_hook(stop, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model.generate(**generate_kwargs, max_new_tokens=step + 2, do_sample=False, disable_compile=True)
    finally:
        for handle in handles:
            handle.remove()
    assert events, "the decode step was not profiled"
    return events


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_decode_step_has_no_host_sync(model, cache):
    """An eager decode step of generate() (a video prompt: MRoPE deltas; left padding: the padding mask) runs no op
    that reads a device value back to the host, with the latent cache growing or static; the mask is built once per
    step (not per layer) and the MRoPE axis table is not rebuilt."""
    kwargs = dict(**video_batch())
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    events = profile_decode_step(model, kwargs)
    syncs = sorted({name for name in events if name in SYNC_OPS})
    assert syncs == [], f"host syncs in the decode step: {syncs}"
    # one causal comparison per step (the shared mask), not one per layer
    assert events.count("aten::le") <= 1, events.count("aten::le")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cuda_decode_step_has_no_host_sync(model, cache):
    """On CUDA, the decode steps of generate() under `torch.cuda.set_sync_debug_mode("error")` (any synchronising
    call raises) run through."""
    model = model.cuda()
    batch = {k: v.cuda() for k, v in video_batch().items()}
    calls = [0]

    def strict(module, args, kwargs):
        calls[0] += 1
        torch.cuda.set_sync_debug_mode("error" if calls[0] > 1 else "default")

    def relax(module, args, kwargs, output):
        torch.cuda.set_sync_debug_mode("default")

    handles = [model.register_forward_pre_hook(strict, with_kwargs=True),
               model.register_forward_hook(relax, with_kwargs=True)]  # fmt: skip
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    try:
        with torch.no_grad():
            model.generate(**batch, **extra, max_new_tokens=5, do_sample=False, disable_compile=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        for handle in handles:
            handle.remove()
    assert calls[0] == 5


# ----------------------------------------------------------------------------------------------------------------------
# Accuracy: bf16 absorbed decode against an fp32 reference, no worse than expanded SDPA (issue 26 item 3)
# ----------------------------------------------------------------------------------------------------------------------

# The 8B head layout at a short cache: 32 heads, d_n = d_r = d_v = 128, r = 896 (SPEC §2).
H, D_N, D_R, D_V, R, T = 32, 128, 128, 128, 896, 256


def absorbed_case(seed: int = 0):
    """bf16 inputs of one decode query over T cached tokens (the model's weights and activations are bf16): q_nope
    [1, H, 1, d_n], q_pe [1, H, 1, d_r], latent [1, T, r], k_pe [1, T, d_r], W_UK [H, d_n, r], W_UV [H, d_v, r];
    logits of a few units, as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    q_nope = torch.randn(1, H, 1, D_N, generator=g)
    q_pe = torch.randn(1, H, 1, D_R, generator=g)
    latent = torch.randn(1, T, R, generator=g)
    k_pe = torch.randn(1, T, D_R, generator=g)
    w_uk = torch.randn(H, D_N, R, generator=g) * R**-0.5 * 2
    w_uv = torch.randn(H, D_V, R, generator=g) * R**-0.5
    return tuple(x.to(torch.bfloat16) for x in (q_nope, q_pe, latent, k_pe, w_uk, w_uv))


def reference_and_sdpa_errors(case):
    """(the fp64 output [1, H, 1, d_v] of attention over these bf16 inputs, mean |error| of the expanded path in bf16:
    K/V expanded from the latent in bf16 (`kv_b_proj`), then transformers-style SDPA)."""
    q_nope, q_pe, latent, k_pe, w_uk, w_uv = case
    scale = (D_N + D_R) ** -0.5

    def expanded(dtype):
        k_nope = torch.einsum("btc,hdc->bhtd", latent.to(dtype), w_uk.to(dtype))
        value = torch.einsum("btc,hdc->bhtd", latent.to(dtype), w_uv.to(dtype))
        key = torch.cat((k_nope, k_pe.to(dtype)[:, None].expand(-1, H, -1, -1)), -1)
        query = torch.cat((q_nope, q_pe), -1).to(dtype)
        if dtype == torch.float64:
            return torch.softmax(query @ key.transpose(-1, -2) * scale, -1) @ value
        return F.scaled_dot_product_attention(query, key, value, scale=scale)

    reference = expanded(torch.float64)
    return reference, (expanded(torch.bfloat16).double() - reference).abs().mean().item()


def absorbed_attention(case):
    """The model's `InternVideo3TextAttention` at the 8B head widths, its `kv_b_proj` holding W_UK / W_UV, in bf16."""
    from configuration_internvideo3 import InternVideo3TextConfig

    config = InternVideo3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=H, head_dim=D_N,
        kv_lora_rank=R, qk_nope_head_dim=D_N, qk_rope_head_dim=D_R, v_head_dim=D_V,
    )  # fmt: skip
    attention = modeling.InternVideo3TextAttention(config, 0)
    w_uk, w_uv = case[4:]
    with torch.no_grad():
        attention.kv_b_proj.weight.copy_(torch.cat((w_uk, w_uv), 1).reshape(-1, R))
    return attention.to(torch.bfloat16).eval()


def absorbed_error(case, reference, absorbed) -> float:
    """Mean |error| of `absorbed(q_nope, q_pe, latent [B, 1, T, r], k_pe [B, 1, T, d_r], mask)` -> [B, S, H, d_v]
    (`InternVideo3TextAttention._absorbed`, or it compiled) in bf16 against the fp64 reference."""
    q_nope, q_pe, latent, k_pe = case[:4]
    with torch.no_grad():
        out = absorbed(q_nope, q_pe, latent[:, None], k_pe[:, None], None).transpose(1, 2)
    assert out.dtype == torch.bfloat16
    return (out.double() - reference).abs().mean().item()


@pytest.mark.parametrize("path", ["torch", "compiled"])
def test_absorbed_bf16_error_no_larger_than_sdpa(path):
    """bf16 absorbed decode (torch path, and the torch path under torch.compile) is no further from the fp32
    reference than expanded SDPA in bf16: its scores are accumulated and kept in fp32."""
    case = absorbed_case()
    reference, sdpa_error = reference_and_sdpa_errors(case)
    absorbed = absorbed_attention(case)._absorbed
    if path == "compiled":
        torch._dynamo.reset()
        absorbed = torch.compile(absorbed, fullgraph=True, backend="aot_eager")
    try:
        error = absorbed_error(case, reference, absorbed)
    finally:
        torch._dynamo.reset()
    assert error <= sdpa_error, f"absorbed {path} bf16 error {error:.5f} > expanded SDPA's {sdpa_error:.5f}"


TRITON_ACCURACY_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["INTERNVIDEO3_LATENT_BACKEND"] = "triton"
    sys.path[:0] = [{tests!r}, {root!r}]
    from internvideo3.kernels.latent_attention import INTERPRETED
    import test_fast_decode as t
    assert INTERPRETED
    case = t.absorbed_case()
    reference, sdpa_error = t.reference_and_sdpa_errors(case)
    print(t.absorbed_error(case, reference, t.absorbed_attention(case)._absorbed), sdpa_error)
    """
)


def test_triton_absorbed_bf16_error_no_larger_than_sdpa():
    """The Triton decode kernel (under TRITON_INTERPRET=1, in a subprocess: the flag is read when the kernels are
    decorated) in bf16 is no further from the fp32 reference than expanded SDPA in bf16."""
    pytest.importorskip("triton")
    tests = os.path.dirname(os.path.abspath(__file__))
    script = TRITON_ACCURACY_SCRIPT.format(tests=tests, root=os.path.dirname(tests))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    error, sdpa_error = map(float, done.stdout.split()[-2:])
    assert error <= sdpa_error, f"absorbed Triton bf16 error {error:.5f} > expanded SDPA's {sdpa_error:.5f}"
