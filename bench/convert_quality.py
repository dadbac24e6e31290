"""Conversion quality on trained weights: train a small Qwen3-style GQA LM (QK-norm) on real text, convert it to M²LA
at several ranks and with each method step switched off, measure perplexity, logit KL and per-layer errors, then heal.

    python bench/convert_quality.py --out /tmp/RESULTS_convert.md     # ≈ 9 min on a shared 2-core CPU
    python bench/convert_quality.py --train-minutes 1 --heal-steps 0   # quick look (prints only)
    python bench/convert_quality.py --family byte --budgets --out /tmp/RESULTS_byte.md   # issue 27: second family

Families (`--family`; widths, text and sequence length default per family, each flag still overrides):
- `bpe` (default): hidden 192, 8 query / 4 KV heads of 32. Text: the documentation strings of ~90 Python
  standard-library modules (`internvideo3.convert.calibration.stdlib_docstrings`). A byte-level BPE tokenizer with
  `--vocab` tokens is trained on the train split (the `tokenizers` library); rows of 128 tokens.
- `byte` (issue 27): hidden 256, 8 query / 2 KV heads of 32, byte-level vocabulary (256 bytes + `<|endoftext|>`,
  `internvideo3.convert.calibration.byte_tokenizer`, no training). Text: the Python language reference that ships
  with the interpreter (`python_reference_topics`, `pydoc_data.topics`); rows of 256 bytes.

Documents are split whole into train and held-out (`internvideo3.convert.quality.split_documents`). The source
folder is a complete checkpoint (weights, config, tokenizer) that the CLI and `examples/heal_converted.py` take as
they are. Random weights have no low-rank structure, which is why the model is trained first (SPEC §9.7).

`--budgets` (issue 27): the converter's own split for `--cache-values` at the GQA cache (2·G·head_dim values per
token and layer), half and a quarter of it, before and after `--distill-steps` of on-policy distillation from the
source (`bench/heal_distill_vs_sft.py`'s `heal_distill`), plus `--search`: other splits, RoPE selections and k_norm
fits at half and a quarter (before healing), with the per-layer energy each keeps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import REPO_ROOT, module_from_file, qwen3_source_model

from internvideo3.convert.calibration import byte_tokenizer, python_reference_topics, stdlib_docstrings, train_tokenizer
from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert, load_m2la
from internvideo3.convert.quality import evaluate, heal, split_documents, token_rows


def train(model, data: torch.Tensor, minutes: float, batch: int, lr: float) -> int:
    """AdamW with warm-up and cosine decay for a fixed wall-clock budget. Returns the number of steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    start, step, budget = time.perf_counter(), 0, minutes * 60
    g = torch.Generator().manual_seed(1)
    while time.perf_counter() - start < budget:
        frac = (time.perf_counter() - start) / budget
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * frac))
        ids = data[torch.randint(0, len(data), (batch,), generator=g)]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"  step {step} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    return step


def layer_means(report) -> dict:
    layers = report["layers"]
    keys = ("kept_energy", "k_nope_rel_error", "v_rel_error", "attn_out_rel_error", "rope_key_energy",
            "qk_norm_fit_error_q", "qk_norm_fit_error_k")
    return {k: sum(s[k] for s in layers) / len(layers) for k in keys}


# Per-family defaults of the width and data flags (a flag given on the command line wins).
FAMILIES = {
    "bpe": dict(hidden=192, layers=4, heads=8, kv_heads=4, head_dim=32, seq_len=128),
    "byte": dict(hidden=256, layers=4, heads=8, kv_heads=2, head_dim=32, seq_len=256),
}


def family_data(args):
    """(tokenizer, train documents, held-out documents, a sentence describing them) of `args.family`."""
    if args.family == "byte":
        train_docs, held_docs = split_documents(python_reference_topics())
        return (byte_tokenizer(), train_docs, held_docs,
                "the Python language reference (`pydoc_data.topics`), byte-level tokens (256 bytes + EOS, no merges)")
    train_docs, held_docs = split_documents(stdlib_docstrings())
    return (train_tokenizer(train_docs, args.vocab), train_docs, held_docs,
            f"Python standard-library docstrings (byte-level BPE, {args.vocab} tokens, trained on the same split)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="bpe",
                        help="source model family: widths, text and tokenizer (see the module docstring)")
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary (family bpe)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--head-dim", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ranks", default="32,64,96,128,224", help="ranks of the full method (224 = full)")
    parser.add_argument("--ablation-ranks", default="64,96")
    parser.add_argument("--calibration-rows", type=int, default=32, help="calibration rows of --seq-len train tokens")
    parser.add_argument("--heal-rank", type=int, default=96)
    parser.add_argument("--heal-steps", type=int, default=120)
    parser.add_argument("--held-rows", type=int, default=96, help="held-out rows of --seq-len tokens to evaluate")
    parser.add_argument("--work", default=None, help="keep the source and converted folders here")
    parser.add_argument("--reuse-source", action="store_true",
                        help="load <work>/source (a source trained by an earlier run with the same data flags) "
                             "instead of training a new one; ablations then compare against the same weights")
    parser.add_argument("--train-only", action="store_true", help="train and save <work>/source, then stop")
    parser.add_argument("--out", default=None, help="write the markdown section to this file (appended)")
    parser.add_argument("--study", action="store_true",
                        help="issue 13: the levers (RoPE width and selection, q_norm, k_norm, calibration size) at "
                             "equal cache budgets instead of the rank sweep")
    parser.add_argument("--budgets", action="store_true",
                        help="issue 27: the --cache-values splits at the GQA cache, half and a quarter, before and "
                             "after distillation healing, instead of the rank sweep")
    parser.add_argument("--search", action="store_true", help="with --budgets: also other splits at half and quarter")
    parser.add_argument("--distill-steps", type=int, default=30, help="with --budgets: on-policy distillation steps")
    parser.add_argument("--distill-lr", type=float, default=1e-4,
                        help="constant; 3e-4 (bench/heal_distill_vs_sft.py) made the byte family worse (RESULTS.md)")
    parser.add_argument("--prompt-len", type=int, default=32, help="distillation prompt tokens (train-row prefixes)")
    parser.add_argument("--completion-len", type=int, default=64, help="tokens the student samples per prompt")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 because on a shared 2-core machine 2 threads ran these small matmuls "
                             "6x slower (measured) than 1")
    args = parser.parse_args(argv)
    for name, value in FAMILIES[args.family].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    torch.set_num_threads(args.threads)
    command = "python bench/convert_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()

    work = Path(args.work or tempfile.mkdtemp(prefix="convert_quality-"))
    tokenizer, train_docs, held_docs, args.text = family_data(args)
    train_rows = token_rows(tokenizer, train_docs, args.seq_len)
    held = token_rows(tokenizer, held_docs, args.seq_len)[: args.held_rows]
    print(f"data: train {train_rows.numel():,} tokens ({len(train_docs)} documents), held-out {held.numel():,} "
          f"({len(held_docs)} documents), vocabulary {len(tokenizer)}")
    source_info = work / "source" / "bench_source.json"
    if args.reuse_source and source_info.is_file():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(work / "source"), dtype=torch.float32).eval()
        steps = json.loads(source_info.read_text())["steps"]
    else:
        model = qwen3_source_model(args, len(tokenizer), tokenizer.eos_token_id)
        steps = train(model, train_rows, args.train_minutes, args.batch, args.lr)
        model.save_pretrained(work / "source")
        tokenizer.save_pretrained(work / "source")
        source_info.write_text(json.dumps({"steps": steps}) + "\n")
    src_ppl, _ = evaluate(model, held)
    print(f"source: {steps} steps, held-out perplexity {src_ppl:.2f}")
    if args.train_only:
        return

    calib = train_rows[torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(2))[: args.calibration_rows]]
    full = (args.kv_heads - 1) * args.head_dim + args.kv_heads * args.head_dim
    rows = []

    def run(label, rank, out="out", **flags):
        options = ConvertOptions(kv_lora_rank=rank, dtype="fp32", calibration_ids=calib, progress=False, overwrite=True,
                                 **flags)
        report = convert(work / "source", work / out, options)
        ppl, kl = evaluate(load_m2la(work / out), held, reference=model)
        row = dict(label=label, rank=rank, ppl=ppl, kl=kl, **layer_means(report), per_layer=report["layers"])
        rows.append(row)
        print(f"{label:34s} r={rank:4d} ppl {ppl:9.2f} KL {kl:.4f} kept {row['kept_energy']:.4f} "
              f"attn err {row['attn_out_rel_error']:.4f}", flush=True)

    if args.study:
        return study(args, command, work, model, held, train_rows, src_ppl, steps, started)
    if args.budgets:
        return budgets(args, command, work, model, tokenizer, held, train_rows, calib, src_ppl, steps, started)
    for rank in [int(r) for r in args.ranks.split(",")]:
        run("full method", min(rank, full), out=f"m2la-r{min(rank, full)}")
    for rank in [int(r) for r in args.ablation_ranks.split(",")] + [full]:
        run("no RoRoPE", rank, rorope=False)
        if rank < full:  # at full rank nothing is dropped, so balancing changes nothing
            run("no K/V balancing", rank, balance=False)
        run("QK-norm: mean-scale fold", rank, qk_norm="scale")
        run("QK-norm: weight fold only (naive)", rank, qk_norm="none")

    healing = None
    if args.heal_steps > 0:
        heal_main = module_from_file("heal_converted", REPO_ROOT / "examples" / "heal_converted.py").main

        heal_argv = ["--source", str(work / "source"), "--converted", str(work / f"m2la-r{args.heal_rank}"),
                     "--steps", str(args.heal_steps), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
                     "--held-rows", str(args.held_rows)]
        healing = heal_main(heal_argv)
        healing["command"] = "python examples/heal_converted.py " + " ".join(heal_argv)
        # Control: the source itself trained for the same steps with the same recipe (it is under-trained too).
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            heal(model, train_rows, args.heal_steps, scratch, learning_rate=3e-4, batch=args.batch)
        healing["source_continued"] = evaluate(model, held)[0]
        print(f"control: source continued {args.heal_steps} steps -> {healing['source_continued']:.2f} "
              f"({time.perf_counter() - t0:.0f} s)")

    (work / "results.json").write_text(json.dumps(dict(rows=rows, source_ppl=src_ppl, healing=healing), indent=2))
    section = render(args, command, steps, src_ppl, train_rows, held, rows, healing, full,
                     time.perf_counter() - started)
    print(section)
    print(f"raw results and folders: {work}")
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + section)


TODAY = dict(rope_selection="uniform", q_norm="fit", qk_norm="lstsq")  # the converter's recipe before issue 13


def study_cases(args) -> list[tuple[str, str, int, int, dict]]:
    """(lever, label, r, d_r, options) of the issue-13 ablations at the GQA budget, half and a quarter of it. Options
    not named are the converter's defaults (RoPE selection qk, q_norm exact, k_norm auto)."""
    from internvideo3.convert.gqa_to_m2la import split_cache_values

    G, d = args.kv_heads, args.head_dim
    gqa = 2 * G * d
    cases = []
    for budget in (gqa, gqa // 2, gqa // 4):
        cases.append(("default", "before issue 13 (d_r = d, uniform, q_norm and k_norm lstsq)", budget - d, d,
                      TODAY))
        rank, d_r = split_cache_values(budget, G, d)
        cases.append(("default", f"new default (--cache-values {budget})", rank, d_r, {}))
        for d_r in sorted({d // 2, d, 3 * d // 2, 2 * d, 3 * d, G * d}):
            if budget - d_r >= 8:
                cases.append(("RoPE width", f"d_r = {d_r}", budget - d_r, d_r, {}))
    half = gqa // 2
    for d_r in (d, 2 * d):
        for rule in ("uniform", "key", "qk"):
            cases.append(("RoPE selection", f"{rule}, d_r = {d_r}", half - d_r, d_r, dict(rope_selection=rule)))
        cases.append(("q_norm", f"fitted (k_norm's treatment), d_r = {d_r}", half - d_r, d_r, dict(q_norm="fit")))
    for treatment in ("lstsq", "lstsq-input", "scale", "none"):
        cases.append(("k_norm", f"{treatment}, d_r = {2 * d}", half - 2 * d, 2 * d, dict(qk_norm=treatment)))
    for treatment in ("lstsq", "lstsq-input"):
        cases.append(("k_norm", f"{treatment}, d_r = {G * d}", gqa - G * d, G * d, dict(qk_norm=treatment)))
    return cases


def study(args, command, work, model, held, train_rows, src_ppl, steps, started):
    """Run `study_cases` (plus calibration sizes) against the same source; print and append the markdown tables."""
    gen = torch.Generator().manual_seed(2)
    perm = torch.randperm(len(train_rows), generator=gen)
    rows = []

    def run(lever, label, rank, d_r, calib_rows=args.calibration_rows, **flags):
        calib = train_rows[perm[:calib_rows]] if "calibration" not in flags else None
        options = ConvertOptions(kv_lora_rank=rank, rope_dim=d_r, dtype="fp32", calibration_ids=calib,
                                 progress=False, overwrite=True, **flags)
        t0 = time.perf_counter()
        report = convert(work / "source", work / "study", options)
        seconds = time.perf_counter() - t0
        ppl, kl = evaluate(load_m2la(work / "study"), held, reference=model)
        row = dict(lever=lever, label=label, rank=rank, rope_dim=d_r, ppl=ppl, kl=kl, seconds=seconds,
                   calib_tokens=report["calibration_tokens"], **layer_means(report))
        rows.append(row)
        print(f"{lever:15s} {label:40s} r={rank:4d} d_r={d_r:4d} ppl {ppl:8.2f} ({ppl / src_ppl:.3f}x) KL {kl:.4f} "
              f"attn err {row['attn_out_rel_error']:.4f} rope share {row['rope_key_energy']:.3f}", flush=True)
        (work / "study.json").write_text(json.dumps(dict(rows=rows, source_ppl=src_ppl), indent=2))

    for lever, label, rank, d_r, flags in study_cases(args):
        run(lever, label, rank, d_r, **flags)
    d, half = args.head_dim, args.kv_heads * args.head_dim
    for calib_rows in (4, 16, 128):
        for treatment in ("lstsq", "lstsq-input"):
            run("calibration", f"{calib_rows}×{args.seq_len} tokens, {treatment}, d_r = {2 * d}", half - 2 * d,
                2 * d, calib_rows=calib_rows, qk_norm=treatment)
    # Another source: the repository's own Markdown (English prose about this project, not Python documentation).
    docs = [str(REPO_ROOT / "README.md"), str(REPO_ROOT / "bench" / "RESULTS.md")]
    run("calibration", f"README.md + RESULTS.md, {args.calibration_rows}×{args.seq_len} tokens, d_r = {2 * d}",
        half - 2 * d, 2 * d, calibration=docs, calibration_tokens=args.calibration_rows * args.seq_len,
        calibration_seq_len=args.seq_len)
    section = render_study(args, command, steps, src_ppl, train_rows, held, rows, time.perf_counter() - started)
    print(section)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + section)


ENERGY_KEYS = ("key_energy_in_rope", "key_energy_in_latent", "value_energy_kept", "attn_out_rel_error")


def budget_search_cases(args, budget: int, default: tuple[int, int]) -> list[tuple[str, int, dict]]:
    """(label, d_r, options) of the alternatives to the converter's split `default` (r, d_r) at `budget` values:
    every RoPE width of the sweep that leaves a latent of at least 8, then the other RoPE selections, k_norm fits
    and a fitted q_norm at the default width. The latent gets the rest of the budget."""
    G, d = args.kv_heads, args.head_dim
    widths = sorted({d // 4, d // 2, 3 * d // 4, d, 3 * d // 2, 2 * d, 3 * d, G * d, budget - 16, budget - 8})
    cases = [(f"d_r = {w}", w, {}) for w in widths
             if w != default[1] and w <= G * d and budget - w >= 8 and budget - w <= 2 * G * d - w]
    d_r = default[1]
    cases += [(f"RoPE selection {rule}, d_r = {d_r}", d_r, dict(rope_selection=rule)) for rule in ("key", "uniform")]
    cases += [(f"k_norm {fit}, d_r = {d_r}", d_r, dict(qk_norm=fit)) for fit in ("lstsq", "scale")]
    cases.append((f"q_norm fitted, d_r = {d_r}", d_r, dict(q_norm="fit")))
    return cases


def budgets(args, command, work, model, tokenizer, held, train_rows, calib, src_ppl, steps, started):
    """Issue 27: the converter's `--cache-values` split at the GQA cache, half and a quarter (and with --search, the
    alternatives of `budget_search_cases`), held-out perplexity before and after `--distill-steps` of on-policy
    distillation from the source. Prints and appends a markdown section; raw numbers in <work>/budgets.json."""
    from heal_distill_vs_sft import heal_distill

    G, d = args.kv_heads, args.head_dim
    gqa = 2 * G * d
    rows = []

    def run(budget_name, budget, label, rank=None, d_r=None, **flags):
        sizes = dict(cache_values=budget) if rank is None else dict(kv_lora_rank=rank, rope_dim=d_r)
        options = ConvertOptions(dtype="fp32", calibration_ids=calib, progress=False, overwrite=True, **sizes, **flags)
        out = work / f"budget-{budget}-{len(rows)}"
        report = convert(work / "source", out, options)
        ppl, kl = evaluate(load_m2la(out), held, reference=model)
        layers = report["layers"]
        row = dict(budget=budget_name, cache_values=budget, label=label, folder=str(out), rank=layers[0]["rank"],
                   rope_dim=layers[0]["rope_dim"], ppl=ppl, ratio=ppl / src_ppl, kl=kl,
                   exact_form=bool(report["exact_form"] and report["exact_form"]["chosen"]),
                   k_norm=report["k_norm"], qk_norm=report["qk_norm"],
                   per_layer=[{k: s[k] for k in ENERGY_KEYS} for s in layers],
                   **{k: sum(s[k] for s in layers) / len(layers) for k in ENERGY_KEYS})
        rows.append(row)
        print(f"{budget_name:8s} {label:42s} r={row['rank']:4d} d_r={row['rope_dim']:4d} ppl {ppl:8.3f} "
              f"({row['ratio']:.4f}x) KL {kl:.5f} key in RoPE {row['key_energy_in_rope']:.3f} in latent "
              f"{row['key_energy_in_latent']:.3f} V kept {row['value_energy_kept']:.3f}", flush=True)
        (work / "budgets.json").write_text(json.dumps(dict(rows=rows, source_ppl=src_ppl), indent=2))
        return row

    names = (("equal", gqa), ("half", gqa // 2), ("quarter", gqa // 4))
    defaults = {name: run(name, budget, f"default (--cache-values {budget})") for name, budget in names}
    heal_rows = [defaults["half"], defaults["quarter"], defaults["equal"]]  # the healing target first
    if args.search:
        for name, budget in names[1:]:
            base = defaults[name]
            found = [run(name, budget, label, budget - d_r, d_r, **flags)
                     for label, d_r, flags in budget_search_cases(args, budget, (base["rank"], base["rope_dim"]))]
            best = min(found, key=lambda r: r["ppl"])
            if best["ppl"] < base["ppl"]:
                best["label"] += " (best found)"
            if best["ratio"] < base["ratio"] - 0.005:  # heal it too where it is clearly better than the default
                heal_rows.insert(0, best)
    heal_args = argparse.Namespace(steps=args.distill_steps, batch=args.batch, lr=args.distill_lr,
                                   eval_every=args.distill_steps, prompt_len=args.prompt_len,
                                   completion_len=args.completion_len)
    for row in heal_rows if args.distill_steps > 0 else ():
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            curve = heal_distill(row["folder"], work / "source", tokenizer, train_rows, held, heal_args, scratch)
        row["healed_ppl"], row["heal_seconds"] = curve[args.distill_steps], time.perf_counter() - t0
        row["healed_ratio"] = row["healed_ppl"] / src_ppl
        print(f"healed {row['budget']:8s} {row['label']:42s} {row['ppl']:.3f} -> {row['healed_ppl']:.3f} "
              f"({row['healed_ratio']:.4f}x, {row['heal_seconds']:.0f} s)", flush=True)
        (work / "budgets.json").write_text(json.dumps(dict(rows=rows, source_ppl=src_ppl), indent=2))
    section = render_budgets(args, command, steps, src_ppl, train_rows, held, rows, time.perf_counter() - started)
    print(section)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + section)


def render_budgets(args, command, steps, src_ppl, train_rows, held, rows, seconds) -> str:
    gqa = 2 * args.kv_heads * args.head_dim
    lines = [
        f"### Family `{args.family}`: hidden {args.hidden}, {args.layers} layers, {args.heads} query / "
        f"{args.kv_heads} KV heads of {args.head_dim} (GQA cache {gqa} values per token and layer)", "",
        f"Command: `{command}` (total {seconds / 60:.1f} min). Trained {steps} AdamW steps of "
        f"{args.batch}×{args.seq_len} tokens on {train_rows.numel():,} tokens of {args.text}; held-out "
        f"{held.numel():,} tokens of other documents, **source perplexity {src_ppl:.3f}**. Calibration "
        f"{args.calibration_rows}×{args.seq_len} train tokens. Healing: {args.distill_steps} steps of on-policy "
        f"distillation from the source (`heal_distill` of bench/heal_distill_vs_sft.py, reverse KL, lr "
        f"{args.distill_lr:g} constant, {args.batch} prompts of {args.prompt_len} tokens, {args.completion_len} "
        f"sampled). Energy columns: layer means of the key energy kept rotated in the RoPE key, kept in the latent, "
        f"and the value energy the latent keeps (conversion_report.json).", "",
        "| budget | conversion | r + d_r | × source before | healed × source | KL before | key in RoPE "
        "| key in latent | V kept | attn-out err |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        healed = f"{r['healed_ratio']:.4f}" if "healed_ratio" in r else ""
        lines.append(
            f"| {r['budget']} | {r['label']}{' (exact form)' if r['exact_form'] else ''} | {r['rank']} + "
            f"{r['rope_dim']} | {r['ratio']:.4f} | {healed} | {max(r['kl'], 0.0):.5f} | "  # float noise: -1e-9 at exact
            f"{r['key_energy_in_rope']:.3f} | {r['key_energy_in_latent']:.3f} | {r['value_energy_kept']:.3f} | {r['attn_out_rel_error']:.4f} |")
    return "\n".join(lines) + "\n"


def render_study(args, command, steps, src_ppl, train_rows, held, rows, seconds) -> str:
    gqa = 2 * args.kv_heads * args.head_dim
    lines = [
        "## Issue 13: conversion levers at equal cache bytes (bench/convert_quality.py --study)", "",
        f"Machine: 2-core CPU, no GPU ({args.threads} torch thread); torch {torch.__version__}. Command: `{command}` "
        f"(total {seconds / 60:.1f} min). Source as above ({steps} steps), **source perplexity {src_ppl:.2f}**; "
        f"calibration {args.calibration_rows}×{args.seq_len} train tokens unless stated. Cache values per token "
        f"and layer = r + d_r (GQA: {gqa}).", "",
        "| lever | conversion | r + d_r | held-out ppl | × source | KL nats/token | attn-out err | RoPE-key share "
        "| kept energy | QK-norm fit err q / k | convert s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lever']} | {r['label']} | {r['rank']} + {r['rope_dim']} = {r['rank'] + r['rope_dim']} | "
            f"{r['ppl']:.2f} | {r['ppl'] / src_ppl:.3f} | {r['kl']:.4f} | {r['attn_out_rel_error']:.4f} | "
            f"{r['rope_key_energy']:.3f} | {r['kept_energy']:.4f} | {r['qk_norm_fit_error_q']:.4f} / "
            f"{r['qk_norm_fit_error_k']:.4f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def render(args, command, steps, src_ppl, train_rows, held, rows, healing, full, seconds) -> str:
    gqa = 2 * args.kv_heads * args.head_dim
    lines = [
        "## GQA → M²LA conversion quality (bench/convert_quality.py)", "",
        f"Date 2026-11-23; machine: 2-core CPU, no GPU ({args.threads} torch thread); torch {torch.__version__}. "
        f"Command: `{command}` "
        f"(total {seconds / 60:.1f} min).", "",
        f"Source: Qwen3-style GQA LM with QK-norm, hidden {args.hidden}, {args.layers} layers, {args.heads} query / "
        f"{args.kv_heads} KV heads of {args.head_dim}, trained {args.train_minutes:g} min ({steps} AdamW steps of "
        f"{args.batch}×{args.seq_len} tokens) on {train_rows.numel():,} tokens of {args.text}. Held-out: "
        f"{held.numel():,} tokens of other documents. **Source perplexity {src_ppl:.2f}.** Calibration: "
        f"{args.calibration_rows}×{args.seq_len} train "
        f"tokens. The shared RoPE key keeps d_r = head_dim = {args.head_dim}; [K_nope; V] has (G−1)·d + G·d = {full} "
        f"dims (the 8B: 1,920). The 8B's 896 + 128 = half of its GQA cache corresponds here to r = "
        f"{gqa // 2 - args.head_dim} ({gqa // 2} of {gqa} values).", "",
        f"| conversion | r | cache values / token / layer (GQA {gqa}) | held-out ppl | KL(src‖conv) nats/token "
        "| kept energy | K_nope err | V err | attn-out err | RoPE-key share | QK-norm fit err q / k |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| source (GQA) | – | {gqa} | {src_ppl:.2f} | 0 | | | | | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['rank']} | {r['rank'] + args.head_dim} | {r['ppl']:.2f} | {r['kl']:.4f} | "
            f"{r['kept_energy']:.4f} | {r['k_nope_rel_error']:.4f} | {r['v_rel_error']:.4f} | "
            f"{r['attn_out_rel_error']:.4f} | {r['rope_key_energy']:.3f} | "
            f"{r['qk_norm_fit_error_q']:.4f} / {r['qk_norm_fit_error_k']:.4f} |")
    lines += [
        "", "Errors are means over layers on the calibration tokens. kept energy: share of the (balanced) [K_nope; V] "
        "second moment the rank keeps; K_nope / V err: the share of each part it loses; attn-out err: "
        "‖M²LA(x) − GQA(x)‖² / ‖GQA(x)‖² of the real converted attention module on the source's layer inputs; "
        "RoPE-key share: share of the key energy that stays rotated in the shared RoPE key (the rest loses its "
        "rotation); QK-norm fit err: relative error of the affine map that replaces q_norm / k_norm.",
    ]
    ref = next((r for r in rows if r["label"] == "full method" and r["rank"] == args.heal_rank), rows[0])
    lines += ["", f"Per layer, full method at r = {ref['rank']}:", "",
              "| layer | kept energy | K_nope err | V err | attn-out err | RoPE-key share | QK-norm fit err q / k |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for s in ref["per_layer"]:
        lines.append(f"| {s['layer']} | {s['kept_energy']:.4f} | {s['k_nope_rel_error']:.4f} | {s['v_rel_error']:.4f} | "
                     f"{s['attn_out_rel_error']:.4f} | {s['rope_key_energy']:.3f} | "
                     f"{s['qk_norm_fit_error_q']:.4f} / {s['qk_norm_fit_error_k']:.4f} |")
    if healing:
        lines += ["", f"Healing (`{healing['command']}`: plain `transformers.Trainer`, lr 3e-4 cosine, "
                  f"{healing['steps']} steps of {args.batch}×{args.seq_len} tokens, {healing['seconds']:.0f} s): "
                  f"r = {args.heal_rank} perplexity {healing['before']:.2f} → **{healing['after']:.2f}** "
                  f"(KL {healing['kl_before']:.4f} → {healing['kl_after']:.4f}); source {healing['source']:.2f}. "
                  f"Control, the source trained the same {healing['steps']} steps with the same recipe: "
                  f"{healing['source_continued']:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
