"""`accelerate launch` target of tests/test_training.py: the SFT console script, plus a per-rank weight digest.

Each rank writes the float64 sum of its parameters after training to `$INTERNVIDEO3_WEIGHT_DIGEST_DIR/rank<i>.digest`,
so the test can check that data-parallel ranks end with equal weights.
"""

import os
from pathlib import Path

from transformers import TrainerCallback

from internvideo3.training.cli import main


class WeightDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = sum(float(p.detach().double().sum()) for p in model.parameters())
        folder = Path(os.environ["INTERNVIDEO3_WEIGHT_DIGEST_DIR"])
        (folder / f"rank{args.process_index}.digest").write_text(repr(digest))


if __name__ == "__main__":
    main("sft", callbacks=[WeightDigest()])
