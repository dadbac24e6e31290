"""Supervised fine-tuning on videos: prints `train_loss: first <x> last <y>`.

    python examples/train_sft.py --max-steps 10 --output-dir runs/sft
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_sft.py --max-steps 10

A thin wrapper of the console script `internvideo3-train-sft` (`internvideo3.training.cli`) with this repository's
defaults: without `--model` the small checkpoint (built or refreshed by `convert/small_checkpoint.py`, as
`examples/generate_video.py` does; random weights, so the numbers are real but the text is not), without `--data` `examples/data/sft.jsonl` on the shipped clip.
"""

from pathlib import Path

from internvideo3.training.cli import checkout_small_checkpoint, main

REPO_ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    main("sft", default_model=lambda: checkout_small_checkpoint(REPO_ROOT), default_data=str(REPO_ROOT / "examples" / "data" / "sft.jsonl"))
