"""GSPO reinforcement learning on videos: prints `reward: first <x> last <y>` (mean reward of the first and last step).

    python examples/train_gspo.py --max-steps 10 --output-dir runs/gspo
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_gspo.py --max-steps 10

A thin wrapper of the console script `internvideo3-train-gspo` (`internvideo3.training.cli`) with this repository's
defaults: without `--model` the small checkpoint (built once by `examples/generate_video.py`'s helper; random
weights, so the numbers are real but the text is not), without `--data` `examples/data/gspo.jsonl` on the shipped clip.
"""

from pathlib import Path

from generate_video import ensure_small_checkpoint

from internvideo3.training.cli import main

if __name__ == "__main__":
    main("gspo", default_model=ensure_small_checkpoint, default_data=str(Path(__file__).resolve().parent / "data" / "gspo.jsonl"))
