"""Peak memory of one packed SFT batch (forward + backward): sample boundaries as `cu_seq_lens_q` (the collator's
batches) vs the dense block-causal `attention_mask` [1, 1, S, S] bool (before issue 23, item 4).

    python bench/bench_packing.py                      # 16K and 32K tokens, reduced width
    python bench/bench_packing.py --tokens 16384 --samples 8

Each (boundaries, tokens) pair runs in a fresh worker process (`--worker`) so its peak resident memory (VmHWM) is its
own; both forms run in the same invocation and the table prints their peaks (MiB), the ratio, and a scalar of each
forward (equal: the same attention). Forward and backward run through the decoder (`model.model`), not the LM head. The model is `small_model` (the test widths, reduced from the 8B) with `--layers` decoder layers and
the M²LA layout of SPEC §3 (text tokens only: the boundaries' cost does not depend on where tokens come from).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from _common import proc_status_mib


def worker(mode: str, tokens: int, samples: int, layers: int) -> dict:
    import torch

    from internvideo3.convert.small_checkpoint import small_model
    from internvideo3.training.collator import block_causal_mask

    torch.manual_seed(0)
    model = small_model(seed=0, num_hidden_layers=layers).float().train()
    model.config.text_config.attention_query_chunk_size = 1024
    lengths = [tokens // samples] * samples
    lengths[-1] += tokens - sum(lengths)
    ids = torch.randint(0, 1000, (1, tokens))
    positions = torch.cat([torch.arange(n) for n in lengths])[None, None].expand(3, 1, -1)
    batch = dict(input_ids=ids, position_ids=positions, use_cache=False)
    if mode == "cu_seq_lens":
        batch["cu_seq_lens_q"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    else:
        batch["attention_mask"] = block_causal_mask(lengths)
    start = time.perf_counter()
    # The decoder only: the LM head's [S, vocab] logits (10 GB at 16K tokens, 151,936 entries) would hide the mask.
    loss = model.model(**batch).last_hidden_state.float().pow(2).mean()
    loss.backward()
    return {"mode": mode, "tokens": tokens, "peak_mib": proc_status_mib("VmHWM")["VmHWM"],
            "seconds": time.perf_counter() - start, "loss": float(loss)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768], help="packed tokens per batch")
    parser.add_argument("--samples", type=int, default=8, help="samples packed into the row")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.samples, args.layers)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    print(f"{'tokens':>7} {'boundaries':>12} {'peak MiB':>9} {'seconds':>8} {'loss':>9}")
    for tokens in args.tokens:
        rows = {}
        for mode in ("dense_mask", "cu_seq_lens"):
            command = [sys.executable, __file__, "--worker", mode, str(tokens), "--samples", str(args.samples),
                       "--layers", str(args.layers)]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows[mode] = row = json.loads(out.strip().splitlines()[-1])
            print(f"{tokens:>7} {mode:>12} {row['peak_mib']:>9.0f} {row['seconds']:>8.1f} {row['loss']:>9.5f}")
        dense, packed = rows["dense_mask"], rows["cu_seq_lens"]
        print(f"{tokens:>7} dense / cu_seq_lens peak: {dense['peak_mib'] / packed['peak_mib']:.2f}x "
              f"({dense['peak_mib'] - packed['peak_mib']:.0f} MiB; the [S, S] bool mask alone is "
              f"{tokens * tokens / 2**20:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
