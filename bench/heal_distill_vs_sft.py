"""Healing a converted model: on-policy distillation from its GQA source vs SFT (continued pretraining), equal steps.

    python bench/heal_distill_vs_sft.py --out /tmp/RESULTS_heal.md          # trains the bench source first
    python bench/heal_distill_vs_sft.py --source <trained GQA folder> --steps 40 --eval-every 10

The source is the converter bench model (`bench/convert_quality.py`: a small Qwen3-style GQA LM with QK-norm trained
on Python standard-library docstrings, with its BPE tokenizer), given with `--source` or trained here. It is converted
to M²LA at `--rank` and healed twice from the same converted weights for `--steps` optimizer steps:

- SFT: next-token loss on train rows of `--seq-len` tokens (`transformers.Trainer`, the recipe of
  `examples/heal_converted.py`), `--batch` rows a step;
- distillation: `InternVideo3DistillationTrainer` (TRL `DistillationTrainer`, `beta=1.0`: per-token reverse KL to
  the source on the student's own samples); prompts are `--prompt-len`-token prefixes of train rows, the student
  samples `--completion-len` tokens, `--batch` prompts a step; the teacher is the source loaded with transformers'
  own `Qwen3ForCausalLM`.

Held-out perplexity is measured every `--eval-every` steps for both, next to the source's. Prints a markdown section.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import qwen3_source_model
from convert_quality import train

from internvideo3.convert.calibration import stdlib_docstrings, train_tokenizer
from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert, load_m2la
from internvideo3.convert.quality import _Rows, evaluate, split_documents, token_rows


def perplexity_callback(held: torch.Tensor, every: int, curve: dict):
    """A TrainerCallback recording held-out perplexity every `every` steps into curve {step: ppl}."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                curve[state.global_step] = evaluate(model, held)[0]
                model.train()

    return Callback()


def heal_sft(folder, train_rows, held, args, scratch) -> dict:
    from transformers import Trainer, TrainingArguments

    model = load_m2la(folder, torch.float32)
    curve = {0: evaluate(model, held)[0]}
    config = TrainingArguments(
        output_dir=str(scratch), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=args.eval_every, save_strategy="no",
        report_to=[], dataloader_num_workers=0, seed=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )  # fmt: skip
    model.train()
    Trainer(model=model, args=config, train_dataset=_Rows(train_rows),
            callbacks=[perplexity_callback(held, args.eval_every, curve)]).train()  # fmt: skip
    return curve


def heal_distill(folder, source_folder, tokenizer, train_rows, held, args, scratch) -> dict:
    from datasets import Dataset
    from transformers import Qwen3ForCausalLM
    from trl import DistillationConfig

    from internvideo3.training import InternVideo3DistillationTrainer, checkpointing

    student = load_m2la(folder, torch.float32)
    teacher = Qwen3ForCausalLM.from_pretrained(source_folder, dtype=torch.float32).eval()
    curve = {0: evaluate(student, held)[0]}
    prompts = [tokenizer.decode(row[: args.prompt_len]) for row in train_rows]
    config = DistillationConfig(
        output_dir=str(scratch), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=args.eval_every, save_strategy="no",
        report_to="none", seed=0, use_cpu=not torch.cuda.is_available(), bf16=False, beta=1.0, temperature=1.0,
        max_completion_length=args.completion_len, disable_tqdm=True, **checkpointing(False),
    )  # fmt: skip
    trainer = InternVideo3DistillationTrainer(
        student, teacher_model=teacher, args=config, train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer, callbacks=[perplexity_callback(held, args.eval_every, curve)],
    )
    student.train()
    trainer.train()
    return curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="trained GQA source folder (default: train the bench source)")
    parser.add_argument("--train-minutes", type=float, default=4.0, help="source training when --source is omitted")
    parser.add_argument("--rank", type=int, default=64, help="kv_lora_rank of the conversion")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--completion-len", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--held-rows", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="append the markdown section to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python bench/heal_distill_vs_sft.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="heal_bench-"))

    from transformers import AutoTokenizer, Qwen3ForCausalLM

    train_docs, held_docs = split_documents(stdlib_docstrings())
    if args.source:
        source_folder = Path(args.source)
        tokenizer = AutoTokenizer.from_pretrained(source_folder)
        source = Qwen3ForCausalLM.from_pretrained(source_folder, dtype=torch.float32).eval()
    else:
        source_folder = work / "source"
        tokenizer = train_tokenizer(train_docs, 4096)
        defaults = argparse.Namespace(hidden=192, layers=4, heads=8, kv_heads=4, head_dim=32)
        source = qwen3_source_model(defaults, len(tokenizer), tokenizer.eos_token_id)
        train(source, token_rows(tokenizer, train_docs, args.seq_len), args.train_minutes, args.batch, 3e-3)
        source.save_pretrained(source_folder)
        tokenizer.save_pretrained(source_folder)
    train_rows = token_rows(tokenizer, train_docs, args.seq_len)
    held = token_rows(tokenizer, held_docs, args.seq_len)[: args.held_rows]
    source_ppl = evaluate(source, held)[0]
    calib = train_rows[torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(2))[:32]]
    convert(source_folder, work / "m2la", ConvertOptions(kv_lora_rank=args.rank, dtype="fp32", calibration_ids=calib,
                                                         progress=False, overwrite=True))  # fmt: skip
    print(f"source ppl {source_ppl:.2f}; converted at r={args.rank}", flush=True)
    t0 = time.perf_counter()
    sft = heal_sft(work / "m2la", train_rows, held, args, work / "sft")
    sft_seconds = time.perf_counter() - t0
    print("SFT", sft, f"{sft_seconds:.0f} s", flush=True)
    t0 = time.perf_counter()
    kd = heal_distill(work / "m2la", source_folder, tokenizer, train_rows, held, args, work / "kd")
    kd_seconds = time.perf_counter() - t0
    print("distillation", kd, f"{kd_seconds:.0f} s", flush=True)

    lines = [
        "## Healing a converted model: on-policy distillation vs SFT (bench/heal_distill_vs_sft.py)", "",
        f"Machine: shared 2-core CPU VM, no GPU ({args.threads} torch thread), torch {torch.__version__}. "
        f"Command: `{command}` (total {(time.perf_counter() - started) / 60:.1f} min).", "",
        f"Source: the converter bench model (`bench/convert_quality.py`), held-out perplexity **{source_ppl:.2f}** on "
        f"{held.numel():,} tokens of other modules' docstrings; converted at r = {args.rank}. Both healings start "
        f"from the same converted weights, AdamW lr {args.lr:g} constant, {args.batch} sequences a step: SFT on "
        f"{args.seq_len}-token train rows ({args.batch * args.seq_len} trained tokens a step); distillation on "
        f"{args.prompt_len}-token train prefixes, the student sampling {args.completion_len} tokens scored by the "
        f"source (reverse KL, ≤ {args.batch * args.completion_len} trained tokens a step).", "",
        "| steps | SFT healing ppl | distillation healing ppl | source ppl |",
        "|---:|---:|---:|---:|",
    ]
    for step in sorted(set(sft) | set(kd)):
        lines.append(f"| {step} | {sft.get(step, float('nan')):.2f} | {kd.get(step, float('nan')):.2f} | {source_ppl:.2f} |")
    lines += ["", f"Wall time: SFT {sft_seconds:.0f} s, distillation {kd_seconds:.0f} s (generation included).", ""]
    section = "\n".join(lines)
    print(section)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + section)


if __name__ == "__main__":
    main()
