"""InternVideo3 (plugin) vs vLLM's own GQA decoder at the same reduced width, both through vLLM, same run (issue 25).

    .venv-vllm/bin/python bench/bench_vllm.py [--kv-gib 1] [--new-tokens 32]

Per model, one engine in a subprocess (fp32, eager, CPU): the KV capacity in tokens read from the engine's own
startup line ("CPU KV cache size: N tokens"), the number of concurrent 4K-token requests that capacity holds without
preemption (capacity // 4096: vLLM admits a request only when all of its blocks fit), and decode tokens/s at 1, 4 and
16 concurrent requests (8-token prompts, `--new-tokens` greedy tokens each, wall time of `LLM.generate` including the
8-token prefill). The GQA reference is vLLM's Qwen3 (Qwen3-VL's text decoder; vLLM's Qwen3-VL module does not import
without torchvision here). Widths: hidden 64, 4 layers, 4 heads; ours r = d_r = d_n = d_v = 32; Qwen3 2 KV heads of 32.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def measure(folder: str, new_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, trust_remote_code=True, dtype="float32", max_model_len=4096 + 64, enforce_eager=True,
              max_num_seqs=16)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [9707] * 8}], params, use_tqdm=False)  # warm-up
    rates = {}
    for n in (1, 4, 16):
        prompts = [{"prompt_token_ids": [1000 + i] * 8} for i in range(n)]
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        rates[n] = n * new_tokens / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kv-gib", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.new_tokens)), flush=True)
        return
    # The capacity line is an INFO log line (importing TRL sets VLLM_LOGGING_LEVEL=ERROR).
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_gib), "VLLM_LOGGING_LEVEL": "INFO"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in zip(("InternVideo3 (M²LA)", "Qwen3 (GQA)"), build(Path(tmp))):
            run = subprocess.run([sys.executable, __file__, "--child", str(folder), "--new-tokens",
                                  str(args.new_tokens)], capture_output=True, text=True, env=env)
            log = run.stdout + run.stderr
            tokens = int(re.search(r"KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
            rates = json.loads(re.search(r"^RESULT (.*)$", log, re.MULTILINE).group(1))
            rows[name] = (tokens, rates)
    print(f"KV budget {args.kv_gib} GiB (VLLM_CPU_KVCACHE_SPACE), fp32, {args.new_tokens} new tokens per request")
    print("| model | KV capacity (tokens) | concurrent 4K requests | decode tok/s @1 | @4 | @16 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (tokens, rates) in rows.items():
        print(f"| {name} | {tokens:,} | {tokens // 4096} | " + " | ".join(f"{rates[k]:.1f}" for k in ("1", "4", "16"))
              + " |")
    (a, ra), (b, rb) = rows.values()
    print(f"| ratio | {a / b:.3f} | {(a // 4096) / (b // 4096):.3f} | "
          + " | ".join(f"{ra[k] / rb[k]:.2f}" for k in ("1", "4", "16")) + " |")


if __name__ == "__main__":
    main()
