"""Decode time per token vs context length: InternVideo3 (absorbed M²LA over the latent cache) vs transformers'
Qwen3-VL (GQA) in one run, and on CUDA the Triton kernel's achieved bandwidth against the device's peak.

    python bench/bench_decode.py --contexts 1024 4096 16384                       # CPU: ratios only
    python bench/bench_decode.py --contexts 4096 16384 --compile                  # + both decoders compiled
    python bench/bench_decode.py --device cuda --contexts 8192 32768 131072 --peak-gbps 3350   # one H100

`model`: the reduced-width pair of `bench_cache_memory.py` (hidden 1024, 32 heads of 32, GQA 8 KV heads vs M²LA
r = 224, d_r = 32: half the cache bytes, the 8B ratios), `--layers` layers, random weights, bf16, both decoders with
static caches pre-filled with `context` random tokens of each cache's own layout (decode cost depends on the cache
length, not its contents; no prefill, no per-step cache copy), then `--steps` one-token forwards; the median step.
With `--compile` each decoder also runs as `torch.compile(decoder, dynamic=False)` (inductor; transformers' own
static-cache fast path is that compiled step): the four variants (eager and compiled, ours and Qwen3-VL's) are timed
interleaved, one step of each in turn, and dynamo's counters give each compiled decoder's graphs, graph breaks and
the recompiles during the timed steps (after warm-up: should be 0).
`attention`: the attention op alone at the 8B widths (one layer, batch 1): our `latent_attention_decode` (torch on
CPU, Triton on CUDA) over a [T, 896] latent + [T, 128] rope cache vs transformers' SDPA attention (what Qwen3-VL
calls) over GQA K/V [8, T, 128] with 32 query heads and a static cache's mask.
`kernel` (CUDA only): `absorbed_attention_triton` alone; bandwidth = latent-cache bytes read / time, vs `--peak-gbps`.
Needs transformers 5.x (its `StaticCache` for Qwen3-VL is written without `cache_position`, which 4.57's needs).

CPU timings do not represent GPU decode: per cached token absorbed decode does about 7.5x the FLOPs of GQA decode
while reading half the bytes (about 62 FLOP/byte, meant for tensor cores, SPEC §10), and a CPU is compute-bound there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch._dynamo

from _common import qwen3vl_text_model
from bench_cache_memory import REDUCED, m2la_text_model
from modeling_internvideo3 import CACHE_NAME, InternVideo3LatentCache

from internvideo3.kernels.latent_attention import (
    absorbed_attention_torch,
    absorbed_attention_triton,
    latent_attention_decode,
    select_backend,
)

WIDTHS_8B = dict(heads=32, rank=896, rope=128, kv_heads=8, head_dim=128)


def median_seconds(fn, device: torch.device, steps: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `steps` calls after `warmup` (CUDA: synchronised per call), seconds."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(steps))


def timed(fn, device: torch.device) -> float:
    """Wall time of one `fn()` call in seconds (CUDA: synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def filled_static_caches(qwen, ours, context: int, room: int, device, dtype):
    """Static caches of both decoders holding `context` random tokens each (room for `room` more)."""
    from transformers import StaticCache

    text = ours.config
    gqa = StaticCache(config=qwen.config, max_cache_len=context + room)
    latent = InternVideo3LatentCache(text, max_cache_len=context + room)
    kv_heads, head_dim = qwen.config.num_key_value_heads, qwen.config.head_dim
    for layer in range(text.num_hidden_layers):
        k = torch.randn(1, kv_heads, context, head_dim, device=device, dtype=dtype)
        gqa.update(k, torch.randn_like(k), layer)
        c = torch.randn(1, 1, context, text.layer_kv_lora_rank(layer), device=device, dtype=dtype)
        latent.update(c, torch.randn(1, 1, context, text.qk_rope_head_dim, device=device, dtype=dtype), layer)
    return gqa, latent


def dynamo_counts() -> dict:
    """Dynamo's running totals: graphs compiled, graph breaks (all reasons)."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "breaks": sum(counters["graph_break"].values())}


@torch.no_grad()
def bench_models(contexts, layers: int, steps: int, device, dtype, compile_: bool = False) -> list[dict]:
    """Per-token decode time of both reduced-width decoders at each context (a one-token forward over the cache),
    eager and with `compile_` also compiled; the variants interleaved step by step (the median of each)."""
    torch.manual_seed(0)
    qwen = qwen3vl_text_model(layers=layers, kv_heads=8, **REDUCED).to(device, dtype).eval()
    ours = m2la_text_model(layers=layers, rank=224, **REDUCED).model.to(device, dtype).eval()
    token = torch.randint(0, REDUCED["vocab"], (1, 1), device=device)
    forwards = {"qwen3vl": qwen, "m2la": ours}
    if compile_:
        torch._dynamo.reset()
        compiled = {f"{name}_compiled": torch.compile(model, dynamic=False) for name, model in forwards.items()}
        forwards.update(compiled)
    rows = []
    for context in contexts:
        gqa, latent = filled_static_caches(qwen, ours, context, steps + 4, device, dtype)
        row = {"context": context}
        step_of = {}
        for name, forward in forwards.items():
            cache = gqa if name.startswith("qwen3vl") else latent
            keep = cache.get_seq_length().clone()

            def step(forward=forward, cache=cache, keep=keep):
                forward(input_ids=token, **{CACHE_NAME: cache}, use_cache=True)
                for layer in cache.layers:  # rewind: every step decodes at `context`, the buffer never fills
                    layer.cumulative_length.copy_(keep)

            before = dynamo_counts()
            start = time.perf_counter()
            for _ in range(3):  # warm-up; compiles the compiled variants
                step()
            after = dynamo_counts()
            if name.endswith("_compiled"):
                row[f"{name}_warmup_s"] = time.perf_counter() - start
                row[f"{name}_graphs"] = after["graphs"] - before["graphs"]
                row[f"{name}_breaks"] = after["breaks"] - before["breaks"]
            step_of[name] = step
        times = {name: [] for name in step_of}
        new = {name: {"graphs": 0, "breaks": 0} for name in step_of}  # during the timed steps
        for _ in range(steps):  # interleaved: one step of every variant in turn, so load changes hit all alike
            for name, step in step_of.items():
                before = dynamo_counts()
                times[name].append(timed(step, device))
                after = dynamo_counts()
                for k in new[name]:
                    new[name][k] += after[k] - before[k]
        for name in step_of:
            row[name] = statistics.median(times[name])
            if name.endswith("_compiled"):
                row[f"{name}_recompiles"] = new[name]["graphs"]
                row[f"{name}_breaks"] += new[name]["breaks"]
        rows.append(row)
        del gqa, latent
    return rows


def absorbed_inputs(context: int, device, dtype):
    """Random q_lat [1, H, 1, r], q_pe [1, H, 1, d_r], latent [1, T, r], rope keys [1, T, d_r] at the 8B widths."""
    H, r, d_r = WIDTHS_8B["heads"], WIDTHS_8B["rank"], WIDTHS_8B["rope"]
    shapes = [(1, H, 1, r), (1, H, 1, d_r), (1, context, r), (1, context, d_r)]
    return [torch.randn(*shape, device=device, dtype=dtype) for shape in shapes]


@torch.no_grad()
def bench_attention(contexts, steps: int, device, dtype) -> list[dict]:
    """The attention op of one layer at the 8B widths: our absorbed latent decode vs what Qwen3-VL's decode step runs
    over a static cache, transformers' `sdpa_attention_forward` with the cache's bool mask (one query: it packs the 4
    query heads of each KV head, no repeat_kv; on CPU the masked SDPA is also ~10x faster than the unmasked one)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    H, d_r, kv, d = (WIDTHS_8B[k] for k in ("heads", "rope", "kv_heads", "head_dim"))
    scale = (d + d_r) ** -0.5
    qwen_attention = SimpleNamespace(num_key_value_groups=H // kv, is_causal=True)  # the module fields it reads
    rows = []
    for context in contexts:
        q_lat, q_pe, ckv, k_pe = absorbed_inputs(context, device, dtype)
        q = torch.randn(1, H, 1, d, device=device, dtype=dtype)
        k, v = (torch.randn(1, kv, context, d, device=device, dtype=dtype) for _ in range(2))
        mask = torch.ones(1, 1, 1, context, device=device, dtype=torch.bool)
        rows.append({
            "context": context,
            "m2la": median_seconds(lambda: latent_attention_decode(q_lat, q_pe, ckv, k_pe, scale), device, steps),
            "qwen3vl": median_seconds(
                lambda: sdpa_attention_forward(qwen_attention, q, k, v, mask, scaling=d**-0.5), device, steps
            ),
        })  # fmt: skip
        del ckv, k_pe, k, v
    return rows


@torch.no_grad()
def bench_kernel(contexts, steps: int, device, dtype, peak_gbps: float) -> list[dict]:
    """Achieved bandwidth of the Triton kernel at the 8B widths: bytes of latent cache read per call / median time."""
    rows = []
    for context in contexts:
        q_lat, q_pe, ckv, k_pe = absorbed_inputs(context, device, dtype)
        args = (q_lat, q_pe, ckv, k_pe, 0.0625)
        seconds = median_seconds(lambda: absorbed_attention_triton(*args), device, steps)
        torch_seconds = median_seconds(lambda: absorbed_attention_torch(*args), device, steps)
        gbps = (ckv.nbytes + k_pe.nbytes) / seconds / 1e9
        rows.append({"context": context, "us": seconds * 1e6, "gbps": gbps, "peak_fraction": gbps / peak_gbps,
                     "torch_us": torch_seconds * 1e6})
        del ckv, k_pe
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the reduced-width models")
    parser.add_argument("--steps", type=int, default=10, help="timed decode steps per point (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="device memory bandwidth (H100 SXM: 3350)")
    parser.add_argument("--compile", action="store_true", help="also time both decoders under torch.compile")
    parser.add_argument("--skip-attention", action="store_true", help="only the model decode table")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads; 1 by default: on the shared 2-core test VM, 2 threads made bf16 matrix-vector products 35x"
        " slower (12 ms vs 0.34 ms for 1024 -> 2816) and the timings erratic",
    )  # fmt: skip
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    backend = select_backend(torch.empty(0, device=device))
    print(f"device {device}, {args.dtype}, latent attention backend: {backend}, median of {args.steps} steps")

    print(f"\nmodel decode, reduced width ({REDUCED['hidden']} hidden, 32 heads x 32; GQA 8 KV heads vs M²LA r=224 +"
          f" d_r=32), {args.layers} layers, static caches, ms/token:")
    rows = bench_models(args.contexts, args.layers, args.steps, device, dtype, args.compile)
    if not args.compile:
        print(f"{'context':>8} {'Qwen3-VL':>10} {'M²LA':>10} {'Qwen3-VL / M²LA':>16}")
        for row in rows:
            q, m = row["qwen3vl"] * 1e3, row["m2la"] * 1e3
            print(f"{row['context']:>8,} {q:>10.2f} {m:>10.2f} {q / m:>16.2f}")
    else:
        print("(interleaved; compiled = torch.compile(decoder, dynamic=False), inductor; graphs / breaks counted over"
              " the warm-up and the timed steps; recompiles = graphs compiled during the timed steps)")
        print(f"{'context':>8} {'Qwen3-VL':>10} {'Qwen3-VL c':>10} {'M²LA':>10} {'M²LA c':>10}"
              f" {'Q c / M c':>10} {'M²LA c/e':>9}  compiled: graphs, breaks, recompiles (Qwen3-VL | M²LA)")
        for row in rows:
            q, qc, m, mc = (row[k] * 1e3 for k in ("qwen3vl", "qwen3vl_compiled", "m2la", "m2la_compiled"))
            stats = " | ".join(
                f"{row[f'{n}_compiled_graphs']}, {row[f'{n}_compiled_breaks']}, {row[f'{n}_compiled_recompiles']}"
                for n in ("qwen3vl", "m2la")
            )
            print(f"{row['context']:>8,} {q:>10.2f} {qc:>10.2f} {m:>10.2f} {mc:>10.2f} {qc / mc:>10.2f}"
                  f" {m / mc:>9.2f}  {stats}")
    if args.skip_attention:
        return

    print("\nattention op, one layer at the 8B widths (32 heads; M²LA 896 + 128 latent vs GQA 8 x 128 K/V), ms:")
    print(f"{'context':>8} {'Qwen3-VL':>10} {'M²LA':>10} {'Qwen3-VL / M²LA':>16}")
    for row in bench_attention(args.contexts, args.steps, device, dtype):
        q, m = row["qwen3vl"] * 1e3, row["m2la"] * 1e3
        print(f"{row['context']:>8,} {q:>10.3f} {m:>10.3f} {q / m:>16.2f}")

    if device.type == "cuda":
        print(f"\nTriton kernel alone, 8B widths: bandwidth = cache bytes read / time, peak {args.peak_gbps:,.0f} GB/s")
        print(f"{'context':>8} {'Triton us':>10} {'GB/s':>8} {'of peak':>8} {'torch us':>10}")
        for row in bench_kernel(args.contexts, args.steps, device, dtype, args.peak_gbps):
            print(f"{row['context']:>8,} {row['us']:>10.1f} {row['gbps']:>8.0f} {row['peak_fraction']:>8.1%}"
                  f" {row['torch_us']:>10.1f}")
    else:
        print("\nCPU timings are compute-bound (absorbed decode does ~7.5x GQA's FLOPs per cached token, reading half"
              " the bytes) and do not represent GPU decode; compare ratios only. No kernel bandwidth without CUDA.")


if __name__ == "__main__":
    main()
