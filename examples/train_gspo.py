"""GSPO reinforcement learning on videos: prints `reward: first <x> last <y>` (mean reward of the first and last step).

    python examples/train_gspo.py --max-steps 10 --output-dir runs/gspo
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_gspo.py --max-steps 10

A thin wrapper of the console script `internvideo3-train-gspo` (`internvideo3.training.cli`) with this repository's
defaults: without `--model` the small checkpoint (built or refreshed by `convert/small_checkpoint.py`, as
`examples/generate_video.py` does; random weights, so the numbers are real but the text is not), without `--data` `examples/data/gspo.jsonl` on the shipped clip.
"""

from pathlib import Path

from internvideo3.training.cli import checkout_small_checkpoint, main

REPO_ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    main("gspo", default_model=lambda: checkout_small_checkpoint(REPO_ROOT), default_data=str(REPO_ROOT / "examples" / "data" / "gspo.jsonl"))
