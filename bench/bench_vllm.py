"""InternVideo3 (plugin) vs vLLM's own GQA decoder at the same reduced width, both through vLLM, same run (issue 25).

    .venv-vllm/bin/python bench/bench_vllm.py [--kv-mib 64] [--requests 32] [--new-tokens 32]

Per model, one engine in a subprocess (fp32, eager, CPU, prefix caching off), its KV cache `--kv-mib` MiB
(`kv_cache_memory_bytes`), measured in the same engine:
- the KV capacity in tokens, read from the engine's own startup line ("CPU KV cache size: N tokens");
- concurrent 4K-token requests: `--requests` requests of 4,096 tokens each (4,032 prompt + 64 generated, distinct
  prompts) submitted at once; the engine is stepped and after each step vLLM's own metrics are read
  (`vllm:num_requests_running`, `vllm:num_preemptions`). Reported: the most requests running at once before the
  first preemption, and the preemptions of the whole run;
- decode tokens/s at 1, 4 and 16 concurrent requests (8-token prompts, `--new-tokens` greedy tokens each, wall time of
  `LLM.generate` including the 8-token prefill; the median of `REPEATS` runs).
The GQA reference is vLLM's Qwen3 (Qwen3-VL's text decoder; vLLM's Qwen3-VL module does not import without
torchvision here). Widths: hidden 64, 4 layers, 4 heads; ours r = d_r = d_n = d_v = 32; Qwen3 2 KV heads of 32.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTHS = dict(head_dim=32, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, kv_lora_rank=32,
              mrope_section=[4, 6, 6])


def build(folder: Path) -> tuple[Path, Path]:
    from internvideo3.convert.export import load_processor, save_model_folder
    from internvideo3.convert.small_checkpoint import save_gqa_twin, small_model

    model = small_model(**WIDTHS)
    ours = save_model_folder(model, load_processor(), folder / "ours")
    return ours, save_gqa_twin(model, ours, folder / "qwen3", max_position_embeddings=8192)


REQUEST_TOKENS, REQUEST_NEW_TOKENS = 4096, 64
REPEATS = 5  # decode rates: the median of this many runs (single runs swing 2-4x at these widths)


def concurrency(llm, requests: int) -> dict:
    """Step the engine over `requests` 4K-token requests submitted at once; vLLM's metrics after every step."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=REQUEST_NEW_TOKENS, ignore_eos=True)
    engine = llm.llm_engine
    for i in range(requests):
        prompt = {"prompt_token_ids": [2000 + i] * (REQUEST_TOKENS - REQUEST_NEW_TOKENS)}  # distinct per request
        engine.add_request(f"long-{i}", prompt, params)
    peak_clean = preempted = 0
    while engine.has_unfinished_requests():
        engine.step()
        metrics = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
        running, preempted = int(metrics["vllm:num_requests_running"]), int(metrics["vllm:num_preemptions"])
        if preempted == 0:
            peak_clean = max(peak_clean, running)
    return {"peak_before_preemption": peak_clean, "preemptions": preempted}


def measure(folder: str, new_tokens: int, kv_bytes: int, requests: int) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, trust_remote_code=True, dtype="float32", max_model_len=REQUEST_TOKENS + 64,
              enforce_eager=True, max_num_seqs=64, kv_cache_memory_bytes=kv_bytes, enable_prefix_caching=False,
              disable_log_stats=False)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [9707] * 8}], params, use_tqdm=False)  # warm-up
    rates = {}
    for n in (1, 4, 16):
        prompts = [{"prompt_token_ids": [1000 + i] * 8} for i in range(n)]
        runs = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            runs.append(n * new_tokens / (time.perf_counter() - start))
        rates[n] = statistics.median(runs)
    start = time.perf_counter()
    long = concurrency(llm, requests)
    long["seconds"] = time.perf_counter() - start
    return {"rates": rates, "long": long}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kv-mib", type=int, default=64, help="KV cache of each engine, MiB")
    parser.add_argument("--requests", type=int, default=32, help="4K-token requests submitted at once")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if args.child:
        result = measure(args.child, args.new_tokens, args.kv_mib << 20, args.requests)
        print("RESULT " + json.dumps(result), flush=True)
        return
    # The capacity line is an INFO log line (importing TRL sets VLLM_LOGGING_LEVEL=ERROR).
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "INFO"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in zip(("InternVideo3 (M²LA)", "Qwen3 (GQA)"), build(Path(tmp))):
            run = subprocess.run([sys.executable, __file__, "--child", str(folder), "--new-tokens",
                                  str(args.new_tokens), "--kv-mib", str(args.kv_mib), "--requests", str(args.requests)],
                                 capture_output=True, text=True, env=env)
            log = run.stdout + run.stderr
            found = re.search(r"^RESULT (.*)$", log, re.MULTILINE)
            if run.returncode or not found:
                sys.exit(f"{name}: the engine run failed (exit {run.returncode}):\n{log[-4000:]}")
            tokens = int(re.search(r"KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
            rows[name] = (tokens, json.loads(found.group(1)))
    print(f"KV budget {args.kv_mib} MiB per engine (kv_cache_memory_bytes), fp32; {args.requests} requests of "
          f"{REQUEST_TOKENS} tokens at once; {args.new_tokens} new tokens per decode request")
    print("| model | KV capacity (tokens) | concurrent 4K requests before the first preemption | preemptions "
          "| 4K run s | decode tok/s @1 | @4 | @16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (tokens, r) in rows.items():
        long = r["long"]
        print(f"| {name} | {tokens:,} | {long['peak_before_preemption']} | {long['preemptions']} | "
              f"{long['seconds']:.1f} | " + " | ".join(f"{r['rates'][k]:.1f}" for k in ("1", "4", "16")) + " |")
    (a, ra), (b, rb) = rows.values()
    print(f"| ratio | {a / b:.3f} | {ra['long']['peak_before_preemption'] / rb['long']['peak_before_preemption']:.3f} "
          "| | | " + " | ".join(f"{ra['rates'][k] / rb['rates'][k]:.2f}" for k in ("1", "4", "16")) + " |")


if __name__ == "__main__":
    main()
