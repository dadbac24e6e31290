"""The SFT video collator: our processor renders and tokenizes each conversation, labels cover assistant tokens only,
and a batch is either right-padded or packed into one row with per-sample 3-D position ids and the sample boundaries
(`cu_seq_lens_q`, transformers' padding-free convention: no [S, S] mask).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .data import clean_messages

IGNORE_INDEX = -100


def assistant_token_mask(input_ids: torch.Tensor, im_start_id: int, header_ids: list[int], im_end_id: int) -> torch.Tensor:
    """[S] bool: True on the tokens of every assistant turn's body and its closing `<|im_end|>`.

    A turn is `<|im_start|>assistant\\n BODY <|im_end|>` in the Qwen chat format (SPEC §7); the header is not
    trained, the end-of-turn token is (so the model learns to stop). A turn cut by truncation is trained to the cut.
    """
    ids = input_ids.tolist()
    mask = torch.zeros(len(ids), dtype=torch.bool)
    h = len(header_ids)
    i = 0
    while i < len(ids):
        if ids[i] == im_start_id and ids[i + 1 : i + 1 + h] == header_ids:
            start = i + 1 + h
            end = start
            while end < len(ids) and ids[end] != im_end_id:
                end += 1
            mask[start : min(end + 1, len(ids))] = True
            i = end + 1
        else:
            i += 1
    return mask


def block_causal_mask(lengths: list[int]) -> torch.Tensor:
    """[1, 1, S, S] bool (True = attend) for sequences of `lengths` packed into one row: causal inside each sequence,
    nothing across. S = sum(lengths); it costs S² bytes. The collator gives the model `cu_seq_lens_q` instead (the
    same attention, T + 1 values); this dense form is for models that only take a 4-D mask."""
    total = sum(lengths)
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    return (causal & (segment[:, None] == segment[None, :]))[None, None]


@dataclass
class InternVideo3SFTCollator:
    """Rows `{"messages": [...]}` -> model inputs for `InternVideo3ForConditionalGeneration`.

    Args:
        processor: our `InternVideo3Processor` (from `AutoProcessor.from_pretrained(..., trust_remote_code=True)`).
        max_length: tokens per sample (None: no limit). A longer sample is cut at the end, unless the cut would fall
            inside or before its visual tokens: then ValueError naming both lengths (lower `max_frames`/`max_pixels`).
        pack: put the batch into one row [1, sum S_i] with `position_ids` [3, 1, sum S_i] (each sample's own MRoPE
            positions from `rope_index`), no `attention_mask`, and the boundaries as transformers' padding-free
            batches carry them: `cu_seq_lens_q` = `cu_seq_lens_k` int32 [n + 1] (0, S_1, S_1 + S_2, ...) and
            `max_length_q` = `max_length_k` (tokens of the longest sample), so packed and unpacked batches give the
            same loss with no [S, S] tensor.
        rope_index: the model's `get_rope_index(input_ids [1, S], image_grid_thw, video_grid_thw)` -> ([3, 1, S],
            deltas); needed with `pack` (the trainer sets it).
        video_kwargs: call-level video budget (`fps`, `max_frames`, `max_pixels`, ...); keys on a video item win.

    Returns (unpacked): `input_ids` [B, S] long (right padding), `attention_mask` [B, S] long, `labels` [B, S] long
    (-100 except on assistant tokens), `pixel_values_videos` [N, 1536] float32 and `video_grid_thw` [n, 3] long when
    there are videos (likewise `pixel_values` / `image_grid_thw` for images).
    """

    processor: Any
    max_length: int | None = None
    pack: bool = False
    rope_index: Callable | None = None
    video_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        self.im_start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.header_ids = tokenizer.encode("assistant\n", add_special_tokens=False)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.im_end_id
        self.visual_ids = {self.processor.video_token_id, self.processor.image_token_id}

    def encode(self, messages: list[dict]) -> dict[str, torch.Tensor]:
        """One conversation -> input_ids [S], labels [S] and its vision tensors."""
        enc = self.processor.apply_chat_template(
            clean_messages(messages), tokenize=True, return_dict=True, return_tensors="pt", **self.video_kwargs
        )
        input_ids = enc["input_ids"][0]
        labels = input_ids.masked_fill(
            ~assistant_token_mask(input_ids, self.im_start_id, self.header_ids, self.im_end_id), IGNORE_INDEX
        )
        if self.max_length is not None and input_ids.shape[0] > self.max_length:
            visual = torch.isin(input_ids, torch.tensor(sorted(self.visual_ids)))
            last_visual = int(visual.nonzero().max()) if visual.any() else -1
            if last_visual >= self.max_length - 1:
                raise ValueError(
                    f"a sample has {input_ids.shape[0]} tokens, its visual tokens end at {last_visual + 1}, and "
                    f"max_length is {self.max_length}: lower the video budget (max_frames / max_pixels) or raise "
                    "max_length"
                )
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        sample = {"input_ids": input_ids, "labels": labels}
        for key in ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw"):
            if key in enc:
                sample[key] = enc[key]
        return sample

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        samples = [self.encode(row["messages"]) for row in rows]
        batch: dict[str, torch.Tensor] = {}
        for key in ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw"):
            parts = [s[key] for s in samples if key in s]
            if parts:
                batch[key] = torch.cat(parts)
        lengths = [s["input_ids"].shape[0] for s in samples]
        if self.pack:
            if self.rope_index is None:
                raise ValueError("packing needs rope_index (the model's get_rope_index)")
            batch["input_ids"] = torch.cat([s["input_ids"] for s in samples])[None]
            # The first label of each sample would be predicted from the previous sample's last token: never train it.
            batch["labels"] = torch.cat([s["labels"].index_fill(0, torch.tensor([0]), IGNORE_INDEX) for s in samples])[None]
            positions = []
            for s in samples:
                pos, _ = self.rope_index(
                    s["input_ids"][None], image_grid_thw=s.get("image_grid_thw"), video_grid_thw=s.get("video_grid_thw")
                )
                positions.append(pos.cpu())
            batch["position_ids"] = torch.cat(positions, dim=-1)
            # Sample boundaries as transformers' padding-free batches give them (no attention_mask): T + 1 values
            # instead of block_causal_mask's [T, T] (4.3 GB at 64K tokens).
            bounds = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = bounds
            batch["max_length_q"] = batch["max_length_k"] = max(lengths)
            return batch
        width = max(lengths)
        batch["input_ids"] = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        batch["labels"] = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        batch["attention_mask"] = torch.zeros((len(samples), width), dtype=torch.long)
        for row, s in enumerate(samples):
            n = s["input_ids"].shape[0]
            batch["input_ids"][row, :n] = s["input_ids"]
            batch["labels"][row, :n] = s["labels"]
            batch["attention_mask"][row, :n] = 1
        return batch
