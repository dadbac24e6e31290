"""KV-cache bytes and peak memory: InternVideo3 (M²LA latent cache) vs transformers' Qwen3-VL (GQA) in one run.

    python bench/bench_cache_memory.py bytes              # bytes/token at the 8B widths, measured + extrapolated
    python bench/bench_cache_memory.py memory             # peak RSS of prefill + 32 decode steps vs context (CPU)

`bytes`: builds ONE decoder layer of each model at the real 8B widths (bf16), prefills 256 tokens, sums the bytes of
every tensor each cache object holds, divides by tokens, multiplies by 36 layers (measured), then multiplies by the
context length for 8K-256K (extrapolated: caches grow linearly, nothing else is assumed).

`memory`: a reduced-width pair with the 8B ratios (hidden 1024, 32 heads of 32, 8 KV heads; M²LA r = 7·32 = 224,
d_r = 32, so the latent cache is half of GQA's), `--layers` layers (8), bf16, each (model, context) in a fresh
subprocess that prefills in `--chunk`-token chunks (4,096) through the cache and decodes 32 steps, then reports its
peak RSS, its RSS during decode and that RSS after `malloc_trim` (freed prefill transients handed back); a linear fit of peak RSS over the measured contexts gives the longest context within
`--budget-mib` (extrapolated, labeled so). CPU timings are compute-bound and do not represent GPU decode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from _common import current_rss_mib, qwen3vl_text_model
from configuration_internvideo3 import InternVideo3TextConfig
from modeling_internvideo3 import CACHE_NAME, InternVideo3LatentCache, InternVideo3TextForCausalLM

CONTEXTS = [8_192, 32_768, 131_072, 262_144]


def m2la_text_model(layers, hidden, heads, head_dim, rank, intermediate, vocab, mrope, expand_budget_bytes=256 << 20):
    config = InternVideo3TextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, head_dim=head_dim, kv_lora_rank=rank, qk_nope_head_dim=head_dim,
        qk_rope_head_dim=head_dim, v_head_dim=head_dim, mrope_section=mrope,
        attention_expand_budget_bytes=expand_budget_bytes,
    )
    return InternVideo3TextForCausalLM(config)


def cache_nbytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def bench_bytes(tokens: int = 256) -> None:
    ids = torch.randint(0, 1000, (1, tokens))
    qwen = qwen3vl_text_model(1, 4096, 32, 8, 128, 12288, 1000, [24, 20, 20]).to(torch.bfloat16).eval()
    out = qwen(input_ids=ids, use_cache=True)
    gqa_layer = cache_nbytes(out[CACHE_NAME]) / tokens
    del qwen, out
    ours = m2la_text_model(1, 4096, 32, 128, 896, 12288, 1000, [24, 20, 20]).to(torch.bfloat16).eval()
    out = ours(input_ids=ids, use_cache=True)
    assert isinstance(out[CACHE_NAME], InternVideo3LatentCache)
    m2la_layer = cache_nbytes(out[CACHE_NAME]) / tokens
    gqa, m2la = gqa_layer * 36, m2la_layer * 36
    print(f"measured on one 8B-width layer, {tokens} tokens, bf16, x 36 layers:")
    print(f"  Qwen3-VL-8B GQA cache : {gqa:>10,.0f} bytes/token")
    print(f"  InternVideo3 M²LA     : {m2la:>10,.0f} bytes/token   ratio {m2la / gqa:.3f}")
    print("extrapolated (linear in context):")
    print(f"  {'context':>8} {'GQA GiB':>9} {'M²LA GiB':>9} {'saved GiB':>10}")
    for n in CONTEXTS:
        print(f"  {n:>8,} {gqa * n / 2**30:>9.2f} {m2la * n / 2**30:>9.2f} {(gqa - m2la) * n / 2**30:>10.2f}")


REDUCED = dict(hidden=1024, heads=32, head_dim=32, intermediate=2816, vocab=1000, mrope=[6, 5, 5])


def run_one(kind: str, context: int, layers: int, steps: int = 32, chunk: int = 4096, expand_budget_mib: int = 256) -> dict:
    """In this (fresh) process: build the reduced model, prefill `context` tokens in chunks of `chunk` through the
    cache (so the prefill transient is bounded and the cache is what grows), decode `steps`; report peak RSS."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 threads on a shared 2-core VM made bf16 matrix-vector products erratic
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: an fp32 build would set the peak, not the context
    if kind == "qwen3vl":
        model = qwen3vl_text_model(layers=layers, kv_heads=8, **REDUCED)
    else:  # the decoder alone, like Qwen3VLTextModel (no LM head over every prompt position)
        model = m2la_text_model(layers=layers, rank=224, expand_budget_bytes=expand_budget_mib << 20, **REDUCED).model
    torch.set_default_dtype(torch.float32)
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(0, REDUCED["vocab"], (1, context))
    cache = None
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, context, chunk):
            cache = model(input_ids=ids[:, begin : begin + chunk], **{CACHE_NAME: cache}, use_cache=True)[CACHE_NAME]
        prefill = time.perf_counter() - start
        token = ids[:, -1:]
        start = time.perf_counter()
        for _ in range(steps):
            cache = model(input_ids=token, **{CACHE_NAME: cache}, use_cache=True)[CACHE_NAME]
        decode = (time.perf_counter() - start) / steps
    return {
        "kind": kind,
        "context": context,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "decode_rss_mib": current_rss_mib(),
        "resident_mib": current_rss_mib(trim=True),
        "cache_mib": cache_nbytes(cache) / 2**20,
        "prefill_s": prefill,
        "decode_s_per_token": decode,
    }


# Same CPU-library settings for both children, so peak RSS follows live tensors rather than library caches:
# a fixed mmap threshold stops glibc from keeping freed multi-MiB prefill buffers on its heap (its dynamic threshold
# otherwise rises to 32 MiB), and oneDNN's primitive cache otherwise keeps a JIT kernel per matmul shape — the absorbed
# decode's key length changes every step (measured: +38 MiB over 32 steps at 8 layers).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}


def bench_memory(contexts: list[int], budget_mib: float, layers: int, chunk: int, expand_budget_mib: int,
                 raw_allocator: bool = False) -> None:
    env = dict(os.environ) if raw_allocator else {**os.environ, **CHILD_ENV}
    print(f"reduced width (hidden 1024, 32 heads x 32, GQA 8 KV heads vs M²LA r=224 + d_r=32), {layers} layers, bf16, CPU,"
          f" prefill in {chunk:,}-token chunks through the cache (M²LA K/V expansion budget {expand_budget_mib} MiB),"
          " then 32 decode steps; child environment "
          + ("unchanged" if raw_allocator else " ".join(f"{k}={v}" for k, v in CHILD_ENV.items())))
    print(f"{'context':>8} {'model':>9} {'peak RSS MiB':>13} {'decode RSS MiB':>15} {'trimmed MiB':>12} {'cache MiB':>10} {'prefill s':>10}"
          f" {'decode ms/tok':>14}")
    rows = {}
    for context in contexts:
        for kind in ("qwen3vl", "m2la"):
            result = subprocess.run(
                [sys.executable, __file__, "one", kind, str(context), "--layers", str(layers), "--chunk", str(chunk),
                 "--expand-budget-mib", str(expand_budget_mib)],
                capture_output=True, text=True, check=True, env=env,
            )
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows[(kind, context)] = row
            print(
                f"{context:>8,} {kind:>9} {row['peak_rss_mib']:>13,.0f} {row['decode_rss_mib']:>15,.0f} {row['resident_mib']:>12,.0f} {row['cache_mib']:>10,.1f} "
                f"{row['prefill_s']:>10.2f} {row['decode_s_per_token'] * 1000:>14.1f}"
            )
        q, m = rows[("qwen3vl", context)], rows[("m2la", context)]
        print(f"{'':>8} {'ratio':>9} {m['peak_rss_mib'] / q['peak_rss_mib']:>13.3f}"
              f" {m['decode_rss_mib'] / q['decode_rss_mib']:>15.3f}"
              f" {m['resident_mib'] / q['resident_mib']:>12.3f} {m['cache_mib'] / q['cache_mib']:>10.3f}"
              f" {m['prefill_s'] / q['prefill_s']:>10.2f} {m['decode_s_per_token'] / q['decode_s_per_token']:>14.2f}")
    print(f"longest context within a {budget_mib:,.0f} MiB budget (peak RSS):")
    for kind in ("qwen3vl", "m2la"):
        xs = torch.tensor([float(c) for c in contexts], dtype=torch.float64)
        ys = torch.tensor([rows[(kind, c)]["peak_rss_mib"] for c in contexts], dtype=torch.float64)
        fitting = [c for c in contexts if rows[(kind, c)]["peak_rss_mib"] <= budget_mib]
        line = f"  {kind:>8}: measured {max(fitting):,} tokens" if fitting else f"  {kind:>8}: no measured context fits"
        if len(contexts) > 1:
            slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
            intercept = float(ys.mean() - slope * xs.mean())
            if slope > 0:
                line += f"; linear fit {intercept:,.0f} MiB + {slope * 1024:,.1f} MiB/1K tokens -> about"
                line += f" {(budget_mib - intercept) / slope:,.0f} tokens (extrapolated)"
        print(line)
    print("CPU timings are compute-bound and do not represent GPU decode; compare memory, not speed.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bytes")
    mem = sub.add_parser("memory")
    mem.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    mem.add_argument("--budget-mib", type=float, default=4096, help="memory budget for the longest-context line")
    mem.add_argument("--layers", type=int, default=8)
    for p in (mem, one := sub.add_parser("one")):
        p.add_argument("--chunk", type=int, default=4096, help="prefill chunk (tokens): its mask and attention "
                       "transients grow with chunk x context")
        p.add_argument("--raw-allocator", action="store_true",
                       help="run the children without CHILD_ENV (glibc and oneDNN defaults)")
        p.add_argument("--expand-budget-mib", type=int, default=256,
                       help="M²LA attention_expand_budget_bytes in MiB (the package default is 256)")
    one.add_argument("kind", choices=["qwen3vl", "m2la"])
    one.add_argument("context", type=int)
    one.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    if args.cmd == "bytes":
        bench_bytes()
    elif args.cmd == "memory":
        bench_memory(args.contexts, args.budget_mib, args.layers, args.chunk, args.expand_budget_mib, args.raw_allocator)
    else:
        print(json.dumps(run_one(args.kind, args.context, args.layers, chunk=args.chunk, expand_budget_mib=args.expand_budget_mib)))


if __name__ == "__main__":
    main()
