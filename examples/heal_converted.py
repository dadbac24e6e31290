"""Heal a converted model: a short continued pretraining with plain `transformers.Trainer`, perplexity before/after.

    internvideo3-convert --src <gqa folder> --out <m2la folder> --kv-lora-rank 96
    python examples/heal_converted.py --source <gqa folder> --converted <m2la folder> --steps 150 --save <healed>

The low-rank step of the conversion loses information (SPEC §9.3-9.4); the paper heals it with continued pretraining
(13.5 B tokens, lr 2e-5). This is the same recipe at toy scale on text that ships with Python: the standard library's
documentation, tokenized with the converted folder's tokenizer; a fixed 10% of the modules is held out. It prints the
held-out perplexity of the source, of the converted model before and after healing, and the KL to the source.
`bench/convert_quality.py` builds a small trained source (with its tokenizer) to run it on.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from internvideo3.convert.calibration import stdlib_docstrings
from internvideo3.convert.gqa_to_m2la import load_m2la
from internvideo3.convert.quality import evaluate, heal, split_documents, token_rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the GQA source folder (for its perplexity and the KL)")
    parser.add_argument("--converted", required=True, help="the converted M²LA folder (with its tokenizer)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--held-rows", type=int, default=96, help="held-out rows of --seq-len tokens to evaluate")
    parser.add_argument("--save", default=None, help="write the healed model here (save_pretrained + remote code)")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.converted, trust_remote_code=True)
    train_docs, held_docs = split_documents(stdlib_docstrings())
    train = token_rows(tokenizer, train_docs, args.seq_len)
    held = token_rows(tokenizer, held_docs, args.seq_len)[: args.held_rows]
    source = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32).eval()
    model = load_m2la(args.converted, torch.float32)
    source_ppl, _ = evaluate(source, held)
    before, kl_before = evaluate(model, held, reference=source)
    print(f"held-out: {held.numel():,} tokens; train: {train.numel():,} tokens")
    print(f"source perplexity {source_ppl:.2f}; converted before healing {before:.2f} (KL {kl_before:.4f})")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        history = heal(model, train, args.steps, scratch, args.learning_rate, args.batch)
    seconds = time.perf_counter() - start
    after, kl_after = evaluate(model, held, reference=source)
    losses = [round(h["loss"], 3) for h in history if "loss" in h]
    print(f"training loss every {max(1, args.steps // 5)} steps: {losses}")
    print(f"after {args.steps} steps ({seconds:.0f} s): perplexity {after:.2f} (KL {kl_after:.4f}); source {source_ppl:.2f}")
    if args.save:
        from internvideo3.convert.export import save_model_folder

        save_model_folder(model, tokenizer, args.save, overwrite=True)
        print(f"saved {args.save}")
    return dict(source=source_ppl, before=before, after=after, kl_before=kl_before, kl_after=kl_after,
                steps=args.steps, seconds=seconds, train_tokens=train.numel(), held_tokens=held.numel())


if __name__ == "__main__":
    main()
