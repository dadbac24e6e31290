"""Streaming memory of the GQA -> M²LA converter at the real 8B width: peak RSS per layer (SPEC §9.6).

    python bench/convert_memory.py                      # 4 layers of a random Qwen3-8B-shaped stack, bf16
    python bench/convert_memory.py --layers 2 --out /tmp/fragment.md

Builds a Qwen3 checkpoint with Qwen3-VL-8B's text widths (hidden 4096, 32 query / 8 KV heads of 128, MLP 12288,
vocabulary 151,936, QK-norm, bf16) and `--layers` decoder layers, written one layer per safetensors shard so no
process ever holds the whole model. Random weights have no low-rank structure, so this measures memory and time,
never quality (that is `bench/convert_quality.py`). The conversion runs in a fresh child process with the default
options (rank 896, 2,048 calibration tokens of standard-library text); after each layer the child reads its peak
resident set (`VmHWM` in /proc/self/status) and resets it (`/proc/self/clear_refs`), so every row is that layer's
own peak. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, proc_status_mib, reset_peak_rss, write_qwen3_source

MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")

# Converter recipes compared (issue 13): today's default, the recipe before issue 13, and a cache budget split.
RECIPES = {
    "default": {},
    "before-issue-13": dict(rope_selection="uniform", q_norm="fit", qk_norm="lstsq"),
    "cache-values-1024": dict(cache_values=1024),
}


def child(src: str, out: str, result: str, recipe: str = "default") -> None:
    """Convert `src` into `out` with the options of `recipe`, recording each layer's peak RSS; write JSON to
    `result`."""
    from internvideo3.convert.export import TOKENIZER_DIR
    from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert

    rows, start = [], proc_status_mib(*MEMORY_FIELDS)
    reset_peak_rss()
    last = [time.perf_counter()]

    def hook(i):
        m = proc_status_mib(*MEMORY_FIELDS)
        rows.append(dict(layer=i, peak_mib=m["VmHWM"], rss_mib=m["VmRSS"], anon_mib=m["RssAnon"],
                         file_mib=m["RssFile"], seconds=time.perf_counter() - last[0]))
        reset_peak_rss()
        last[0] = time.perf_counter()

    # the source is Qwen3-shaped (vocabulary 151,936) and has no tokenizer files: the real Qwen3 tokenizer fits it
    report = convert(src, out, ConvertOptions(progress=False, overwrite=True, tokenizer=str(TOKENIZER_DIR),
                                              **RECIPES[recipe]), layer_hook=hook)
    tail = proc_status_mib(*MEMORY_FIELDS)  # embeddings, final norm, lm_head copied, shards and index written
    Path(result).write_text(json.dumps(dict(
        start_mib=start["VmRSS"], layers=rows, tail_peak_mib=tail["VmHWM"], tail_seconds=time.perf_counter() - last[0],
        total_seconds=report["seconds"], calibration_tokens=report["calibration_tokens"],
        stats=[{k: s[k] for k in ("kept_energy", "attn_out_rel_error", "qk_norm_fit_error_k")} for s in report["layers"]],
    )))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work", default=None, help="folder for the source and output (default: a temporary one)")
    parser.add_argument("--out", default=None, help="append the markdown table to this file")
    parser.add_argument("--recipes", default="default",
                        help=f"comma-separated converter recipes to run, each in its own child: {sorted(RECIPES)}")
    parser.add_argument("--child", nargs=4, metavar=("SRC", "OUT", "RESULT", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    command = "python bench/convert_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work = Path(args.work or tempfile.mkdtemp(prefix="convert_memory-"))
    t0 = time.perf_counter()
    size = write_qwen3_source(work / "source", args.layers)
    print(f"source: {args.layers} layers at 4096 width, {size / 2**30:.2f} GiB bf16, built in "
          f"{time.perf_counter() - t0:.0f} s")
    recipes = args.recipes.split(",")
    results = {}
    for recipe in recipes:
        result = work / f"result-{recipe}.json"
        subprocess.run([sys.executable, __file__, "--child", str(work / "source"), str(work / "out"), str(result),
                        recipe], check=True, cwd=REPO_ROOT)
        results[recipe] = json.loads(result.read_text())
        results[recipe]["out_bytes"] = sum(f.stat().st_size for f in (work / "out").glob("*.safetensors"))
    r = results[recipes[0]]
    out_size = r["out_bytes"]
    layer_bytes = 2 * (4096 * 4096 * 2 + 2 * 1024 * 4096 + 3 * 4096 * 12288)
    lines = [
        "### Streaming memory at the real width (bench/convert_memory.py)", "",
        f"Command: `{command}`. Source: random bf16 Qwen3 stack with Qwen3-VL-8B's text widths (hidden 4096, 32/8 "
        f"heads × 128, MLP 12288, vocabulary 151,936, QK-norm), {args.layers} layers, {size / 2**30:.2f} GiB "
        f"({layer_bytes / 2**20:.0f} MiB per layer); output {out_size / 2**30:.2f} GiB. Default options: rank 896, "
        f"{r['calibration_tokens']} calibration tokens, fp64 math, per-layer error measured. Child process RSS "
        f"before converting: {r['start_mib']:.0f} MiB. Peak = VmHWM over that step, reset after each layer.", "",
        "| step | peak RSS MiB | RSS after MiB (anon / file-mapped) | seconds |", "|---|---:|---:|---:|",
    ]
    for row in r["layers"]:
        lines.append(f"| layer {row['layer']} | {row['peak_mib']:,.0f} | {row['rss_mib']:,.0f} ({row['anon_mib']:,.0f} / "
                     f"{row['file_mib']:,.0f}) | {row['seconds']:.1f} |")
    lines.append(f"| embeddings, lm_head, shards, index | {r['tail_peak_mib']:,.0f} | | {r['tail_seconds']:.1f} |")
    peak = max([row["peak_mib"] for row in r["layers"]] + [r["tail_peak_mib"]])
    per_layer = sum(row["seconds"] for row in r["layers"]) / len(r["layers"])
    lines += ["", f"Peak over the run: **{peak / 1024:.2f} GiB**. The heap after each layer grows by the converted "
              f"tensors waiting in the shard buffer, which is written out at --max-shard-size-gb (default 2 GiB); so "
              f"a 36-layer 8B source stays below the largest step peak + 2 GiB ≈ {peak / 1024 + 2:.1f} GiB (a bound "
              f"from the measured peaks, not a 36-layer measurement). Time: {per_layer:.0f} s per layer here, "
              f"≈ {36 * per_layer / 60:.0f} min for 36 layers (extrapolated)."]
    if len(recipes) > 1:
        lines += ["", "| recipe | options | peak RSS GiB | s / layer | output GiB |", "|---|---|---:|---:|---:|"]
        for name, res in results.items():
            peak_r = max([row["peak_mib"] for row in res["layers"]] + [res["tail_peak_mib"]]) / 1024
            per = sum(row["seconds"] for row in res["layers"]) / len(res["layers"])
            lines.append(f"| {name} | `{RECIPES[name] or 'defaults'}` | {peak_r:.2f} | {per:.1f} | "
                         f"{res['out_bytes'] / 2**30:.2f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + section)


if __name__ == "__main__":
    main()
