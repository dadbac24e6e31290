"""Console scripts `internvideo3-train-sft`, `internvideo3-train-gspo`, `internvideo3-train-distill`.

Each loads the model through `AutoModelForCausalLM` / `AutoProcessor` (`trust_remote_code=True`), trains with the
TRL subclass in `trainers`, saves a folder that loads with `from_pretrained(trust_remote_code=True)`, and prints as
its last line `train_loss: first <x> last <y>` (SFT), `reward: first <x> last <y>` (GSPO, mean reward of the first
and last step) or `reverse_kl: first <x> last <y>` (distillation, the per-token KL(student ‖ teacher) in nats).
They run unchanged under `accelerate launch` (DDP, FSDP, DeepSpeed ZeRO-3: see README).

The output folder is written as `<dir>.partial-<id>` and renamed to `<dir>` when complete; an existing non-empty
`<dir>` is an error, so two runs never overwrite each other. `examples/train_*.py` call `main` with the repository's
defaults (the small checkpoint, the shipped clips).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

KINDS = {"sft": "train_loss", "gspo": "reward", "distill": "reverse_kl"}


def checkout_small_checkpoint(repo_root: str | Path) -> Path:
    """The small checkpoint of a source checkout (`<repo_root>/checkpoints/internvideo3-small`), built once and
    rebuilt when its remote code differs from the installed one (`internvideo3.convert.small_checkpoint`)."""
    from internvideo3.convert.small_checkpoint import ensure_small_checkpoint

    return ensure_small_checkpoint(Path(repo_root) / "checkpoints" / "internvideo3-small")


def build_parser(kind: str, default_model: str | None, default_data: str | None) -> argparse.ArgumentParser:
    titles = {
        "sft": "Supervised fine-tuning of InternVideo3 on videos (TRL SFTTrainer; loss on assistant tokens).",
        "gspo": "GSPO reinforcement learning of InternVideo3 on videos (TRL GRPOTrainer, sequence-level ratio).",
        "distill": "On-policy distillation into InternVideo3 (TRL DistillationTrainer, reverse KL to a teacher).",
    }
    parser = argparse.ArgumentParser(description=titles[kind])
    parser.add_argument("--model", default=default_model, required=default_model is None,
                        help="student checkpoint folder or Hub id" + (" (default: the small checkpoint)" if default_model else ""))  # fmt: skip
    parser.add_argument("--data", default=default_data, required=default_data is None,
                        help="JSONL training file (see internvideo3.training.data)" + (f" (default: {default_data})" if default_data else ""))  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=10, help="optimizer steps")
    parser.add_argument("--output-dir", default=None, help="folder to write (default: internvideo3-<kind>-<time>)")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="samples (SFT) or completions per device step")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--fps", type=float, default=None, help="video frames per second (items may override)")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per video at most")
    parser.add_argument("--max-pixels", type=int, default=None, help="pixels per frame at most")
    parser.add_argument("--min-pixels", type=int, default=None,
                        help="pixels per frame at least (pass it with a --max-pixels below the processor's 131072)")  # fmt: skip
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 mixed precision (default: on with CUDA, off on CPU)")  # fmt: skip
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="weights as loaded (default: the checkpoint's dtype; float32 + --bf16 is mixed precision)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    for part in ("vision-tower", "merger", "language-model"):
        parser.add_argument(f"--freeze-{part}", action="store_true", help=f"do not train the {part.replace('-', ' ')}")
    if kind == "sft":
        parser.add_argument("--packing", action="store_true", help="pack each batch into one row (same loss)")
        parser.add_argument("--max-length", type=int, default=None, help="tokens per sample at most")
    else:
        parser.add_argument("--num-generations", type=int, default=4, help="samples per prompt")
        parser.add_argument("--max-completion-length", type=int, default=32, help="new tokens per sample")
        parser.add_argument("--temperature", type=float, default=1.0)
    if kind == "gspo":
        parser.add_argument("--steps-per-generation", type=int, default=None,
                            help="optimizer micro-steps per rollout batch (> accumulation: off-policy, ratio matters)")  # fmt: skip
    if kind == "distill":
        parser.add_argument("--teacher", required=True, help="teacher folder or Hub id (same tokenizer)")
        parser.add_argument("--beta", type=float, default=1.0, help="1.0 reverse KL, 0.0 forward KL, 0.5 JSD")
    return parser


class _History:
    """A TrainerCallback recording one logged value per step."""

    def __init__(self, key: str):
        from transformers import TrainerCallback

        history = self.values = []

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and key in logs and logs[key] is not None:
                    history.append(float(logs[key]))

        self.callback = Callback()


def _output_dir(value: str | None, kind: str) -> Path:
    out = Path(value) if value else Path(f"internvideo3-{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--output-dir {out} exists and is not empty: choose a new folder")
    return out


def _common_args(args, kind: str, scratch: Path) -> dict:
    import torch

    from .trainers import checkpointing

    bf16 = torch.cuda.is_available() if args.bf16 is None else args.bf16
    values = dict(
        output_dir=str(scratch),
        max_steps=args.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        bf16=bf16,
        # Without CUDA, accelerate only sets up multi-process (gloo) data parallelism when told it runs on CPU.
        use_cpu=not torch.cuda.is_available(),
        **checkpointing(args.gradient_checkpointing),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        disable_tqdm=True,
    )
    if args.learning_rate is not None:
        values["learning_rate"] = args.learning_rate
    return values


def _video_kwargs(args) -> dict:
    names = ("fps", "max_frames", "min_pixels", "max_pixels")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _with_video_defaults(dataset, column: str, video_kwargs: dict):
    """Call-level budget for rollout prompts, which TRL renders itself: put it on each video item (items win)."""
    if not video_kwargs:
        return dataset

    def apply(row):
        for message in row[column]:
            for part in message["content"]:
                if part.get("type") == "video":
                    for key, value in video_kwargs.items():
                        if part.get(key) is None:
                            part[key] = value
        return row

    return dataset.map(apply)


def prepare(kind: str, args, callbacks=()):
    """Everything before the first step: output folder, data, model, processor, trainer (extra
    `transformers.TrainerCallback`s in `callbacks`). Bad arguments and data raise here (`ValueError`, `OSError`),
    before any work that a traceback would need to explain. Returns the state `train` runs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    from .data import load_jsonl
    from .rewards import DEFAULT_REWARDS
    from .trainers import (
        InternVideo3DistillationTrainer,
        InternVideo3GSPOTrainer,
        InternVideo3SFTTrainer,
        gspo_config,
    )

    out = _output_dir(args.output_dir, kind)
    dataset = load_jsonl(args.data, kind)
    # One name for all ranks of a launch (they share the launcher as parent), distinct across runs.
    run_id = os.getppid() if "LOCAL_RANK" in os.environ else os.getpid()
    scratch = out.parent / f"{out.name}.partial-{run_id}"
    # "auto": the checkpoint's own dtype (config.dtype), as TRL's scripts load models.
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    # The call-level video budget is checked now, with the processor's defaults, not at the first batch.
    processor.video_processor.merge_settings(_video_kwargs(args))
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=dtype)
    freezing = dict(freeze_vision_tower=args.freeze_vision_tower, freeze_merger=args.freeze_merger,
                    freeze_language_model=args.freeze_language_model)  # fmt: skip
    common = _common_args(args, kind, scratch)
    history = _History({"sft": "loss", "gspo": "reward", "distill": "loss"}[kind])
    if kind == "sft":
        from trl import SFTConfig

        config = SFTConfig(per_device_train_batch_size=args.batch_size or 2, packing=args.packing,
                           max_length=args.max_length, **common)  # fmt: skip
        trainer = InternVideo3SFTTrainer(model, args=config, train_dataset=dataset, processing_class=processor,
                                         video_kwargs=_video_kwargs(args), callbacks=[history.callback, *callbacks], **freezing)  # fmt: skip
    elif kind == "gspo":
        dataset = _with_video_defaults(dataset, "prompt", _video_kwargs(args))
        batch = args.batch_size or args.num_generations
        config = gspo_config(
            per_device_train_batch_size=batch,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            temperature=args.temperature,
            steps_per_generation=args.steps_per_generation or 2 * args.gradient_accumulation_steps,
            **common,
        )
        trainer = InternVideo3GSPOTrainer(model, reward_funcs=list(DEFAULT_REWARDS), args=config,
                                          train_dataset=dataset, processing_class=processor,
                                          callbacks=[history.callback, *callbacks], **freezing)  # fmt: skip
    else:
        from trl import DistillationConfig

        dataset = _with_video_defaults(dataset, "prompt", _video_kwargs(args))
        # A transformers architecture (e.g. the GQA source of a converted student) loads with its own classes.
        teacher = AutoModelForCausalLM.from_pretrained(args.teacher, trust_remote_code=True, dtype=dtype)
        config = DistillationConfig(per_device_train_batch_size=args.batch_size or args.num_generations,
                                    max_completion_length=args.max_completion_length, temperature=args.temperature,
                                    beta=args.beta, **common)  # fmt: skip
        trainer = InternVideo3DistillationTrainer(model, teacher_model=teacher, args=config, train_dataset=dataset,
                                                  processing_class=processor, callbacks=[history.callback, *callbacks],
                                                  **freezing)  # fmt: skip
    return trainer, processor, history, out, scratch


def train(prepared) -> tuple[list[float], Path, bool]:
    """Run what `prepare` built and save it; returns (per-step values of the printed metric, the saved folder,
    whether this is the main process). Errors raised here keep their traceback and end the process (under
    `accelerate launch` the launcher then stops every rank): the scratch folder is removed, nothing is renamed."""
    trainer, processor, history, out, scratch = prepared
    try:
        trainer.train()
        trainer.save_model(str(scratch))
        trainer.accelerator.wait_for_everyone()  # every rank's part of the save is on disk before the rename
        if trainer.accelerator.is_main_process:
            processor.save_pretrained(str(scratch))
            os.replace(scratch, out)
    except BaseException:
        if trainer.accelerator.is_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return history.values, out, trainer.accelerator.is_main_process


def main(kind: str, argv=None, default_model: str | Callable[[], str] | None = None, default_data: str | None = None,
         callbacks=()) -> None:  # fmt: skip
    """Entry point; `default_model` may be a function (called only when `--model` is omitted, e.g. to build the
    small checkpoint). Exits 2 with one `error: ...` line on bad arguments or data (found before training starts);
    an error during training keeps its traceback."""
    wants_default = default_model is not None and "--model" not in (argv if argv is not None else sys.argv[1:])
    placeholder = "<default>" if callable(default_model) else default_model
    parser = build_parser(kind, placeholder, default_data)
    args = parser.parse_args(argv)
    if args.min_pixels is not None and args.max_pixels is not None and args.min_pixels > args.max_pixels:
        parser.exit(2, f"error: --min-pixels ({args.min_pixels}) must be <= --max-pixels ({args.max_pixels})\n")
    if wants_default and callable(default_model):
        args.model = str(default_model())
    try:
        prepared = prepare(kind, args, callbacks)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as error:  # arguments and data: one line
        parser.exit(2, f"error: {error}\n")
    values, out, is_main = train(prepared)
    if not is_main:
        return
    if not values:
        parser.exit(2, f"error: no {KINDS[kind]} was logged (--max-steps {args.max_steps})\n")
    print(f"saved {out}")
    print(f"{KINDS[kind]}: first {values[0]:.5g} last {values[-1]:.5g}")


def sft_main(argv=None) -> None:
    main("sft", argv)


def gspo_main(argv=None) -> None:
    main("gspo", argv)


def distill_main(argv=None) -> None:
    main("distill", argv)
