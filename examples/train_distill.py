"""On-policy distillation from --teacher: prints `reverse_kl: first <x> last <y>`.

    python examples/train_distill.py --teacher DIR --max-steps 10 --output-dir runs/distill
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_distill.py --teacher DIR --max-steps 10

A thin wrapper of the console script `internvideo3-train-distill` (`internvideo3.training.cli`) with this repository's
defaults: without `--model` the small checkpoint (built once by `examples/generate_video.py`'s helper; random
weights, so the numbers are real but the text is not), without `--data` `examples/data/distill.jsonl` on the shipped clip.
"""

from pathlib import Path

from generate_video import ensure_small_checkpoint

from internvideo3.training.cli import main

if __name__ == "__main__":
    main("distill", default_model=ensure_small_checkpoint, default_data=str(Path(__file__).resolve().parent / "data" / "distill.jsonl"))
