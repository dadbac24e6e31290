"""Supervised fine-tuning on videos: prints `train_loss: first <x> last <y>`.

    python examples/train_sft.py --max-steps 10 --output-dir runs/sft
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_sft.py --max-steps 10

A thin wrapper of the console script `internvideo3-train-sft` (`internvideo3.training.cli`) with this repository's
defaults: without `--model` the small checkpoint (built once by `examples/generate_video.py`'s helper; random
weights, so the numbers are real but the text is not), without `--data` `examples/data/sft.jsonl` on the shipped clip.
"""

from pathlib import Path

from generate_video import ensure_small_checkpoint

from internvideo3.training.cli import main

if __name__ == "__main__":
    main("sft", default_model=ensure_small_checkpoint, default_data=str(Path(__file__).resolve().parent / "data" / "sft.jsonl"))
