"""Training InternVideo3 on videos with TRL (SPEC §11): data, collator, rewards and thin trainer subclasses.

    from internvideo3.training import InternVideo3SFTTrainer, load_jsonl

Importing this module needs the `train` extra (`pip install "internvideo3[train]"`, which installs TRL).
"""

from .collator import InternVideo3SFTCollator, assistant_token_mask, block_causal_mask
from .data import clean_messages, llava_to_messages, load_jsonl, parse_row
from .rewards import (
    DEFAULT_REWARDS,
    extract_choice,
    format_reward,
    multiple_choice_reward,
    parse_interval,
    temporal_iou,
    temporal_iou_reward,
)
from .trainers import (
    InternVideo3DistillationTrainer,
    InternVideo3GSPOTrainer,
    InternVideo3SFTTrainer,
    checkpointing,
    freeze,
    gspo_config,
)

__all__ = [
    "DEFAULT_REWARDS",
    "InternVideo3DistillationTrainer",
    "InternVideo3GSPOTrainer",
    "InternVideo3SFTCollator",
    "InternVideo3SFTTrainer",
    "assistant_token_mask",
    "block_causal_mask",
    "checkpointing",
    "clean_messages",
    "extract_choice",
    "format_reward",
    "freeze",
    "gspo_config",
    "llava_to_messages",
    "load_jsonl",
    "multiple_choice_reward",
    "parse_interval",
    "parse_row",
    "temporal_iou",
    "temporal_iou_reward",
]
