"""Training with TRL (SPEC §11): data, collator, rewards, SFT / GSPO / distillation subclasses, checkpointing, DDP.

Everything runs the real pipeline on CPU: the small checkpoint through the Auto classes, the real tokenizer and real
clips decoded by our processor, TRL's trainers. Video budgets are tiny (2 frames of at most 128×128) to fit CI.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")  # the `test` extra installs it; the message says what is missing otherwise

from conftest import DEMO_VIDEO, REPO_ROOT  # noqa: E402
from transformers import AutoModelForCausalLM, AutoProcessor, TrainerCallback  # noqa: E402

from internvideo3.training import (  # noqa: E402
    InternVideo3DistillationTrainer,
    InternVideo3GSPOTrainer,
    InternVideo3SFTCollator,
    InternVideo3SFTTrainer,
    block_causal_mask,
    checkpointing,
    format_reward,
    freeze,
    gspo_config,
    load_jsonl,
    multiple_choice_reward,
    parse_interval,
    temporal_iou,
    temporal_iou_reward,
)
from internvideo3.training.data import clean_messages  # noqa: E402

BUDGET = {"fps": 2, "max_frames": 2, "min_pixels": 4096, "max_pixels": 16384}
QUIET = dict(report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, bf16=False, use_cpu=True)


def _clip(videos_dir, name="hevc_128x128.mp4"):
    return {"type": "video", "video": str(videos_dir / name), **BUDGET}


def _snow(start=0.0):
    return {"type": "video", "video": str(DEMO_VIDEO), "video_start": start, "video_end": start + 1.0, **BUDGET}


@pytest.fixture(scope="module")
def processor(small_checkpoint):
    return AutoProcessor.from_pretrained(small_checkpoint, trust_remote_code=True)


def _model(path):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dataset(tmp_path: Path, rows: list[dict], kind: str):
    """Rows as users give them: a JSONL file read by `load_jsonl`."""
    return load_jsonl(_write_jsonl(tmp_path / f"{kind}.jsonl", rows), kind)


def _sft_rows(videos_dir):
    return [
        {"messages": [
            {"role": "user", "content": [_clip(videos_dir), {"type": "text", "text": "Describe the pattern."}]},
            {"role": "assistant", "content": "A synthetic colour test pattern."},
        ]},
        {"messages": [
            {"role": "user", "content": [_snow(), {"type": "text", "text": "What animal is there?"}]},
            {"role": "assistant", "content": "A yellow dog in the snow."},
        ]},
    ]  # fmt: skip


class _Values(TrainerCallback):
    """Collects one logged key per step; optionally stops once `stop(values)` holds."""

    def __init__(self, key, stop=None):
        self.key, self.stop, self.values = key, stop, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and logs.get(self.key) is not None:
            self.values.append(float(logs[self.key]))
            if self.stop is not None and self.stop(self.values):
                control.should_training_stop = True


# ---------------------------------------------------------------------------------------------------------------
# Rewards (hand-written cases)
# ---------------------------------------------------------------------------------------------------------------
def test_temporal_iou_cases():
    assert temporal_iou((0.0, 1.0), (2.0, 3.0)) == 0.0  # no overlap
    assert temporal_iou((2.0, 3.0), (0.0, 4.0)) == pytest.approx(0.25)  # containment
    assert temporal_iou((1.0, 3.0), (2.0, 4.0)) == pytest.approx(1 / 3)
    assert temporal_iou((2.0, 4.0), (2.0, 4.0)) == 1.0
    assert temporal_iou(None, (0.0, 1.0)) == 0.0
    assert parse_interval("[5.0, 2.0]") is None  # reversed
    assert parse_interval("from 2 until later") is None  # malformed
    assert parse_interval("The dog appears at [2.5, 7] seconds") == (2.5, 7.0)
    assert parse_interval("<think>hmm</think>3 - 4.5 s") == (3.0, 4.5)


def test_reward_functions():
    completions = [[{"role": "assistant", "content": "<think>a dog</think> The answer is B"}], "[1, 3]", "A", "[3, 1]"]
    answers = [json.dumps("B"), json.dumps([2.0, 4.0]), json.dumps("B"), json.dumps([2.0, 4.0])]
    assert multiple_choice_reward(completions, answers) == [1.0, None, 0.0, None]
    assert temporal_iou_reward(completions, answers) == [None, pytest.approx(1 / 3), None, 0.0]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(["<think></think>", "<think>x</think>B", "B <think>x</think>"]) == [0.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# Data and collator
# ---------------------------------------------------------------------------------------------------------------
def test_jsonl_formats_and_errors(tmp_path, videos_dir):
    clip = str(videos_dir / "hevc_128x128.mp4")
    path = _write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "video", "video": clip, "fps": 2},
                                                   {"type": "text", "text": "Q?"}]},
                      {"role": "assistant", "content": "A."}]},
        {"video": clip, "video_kwargs": {"fps": 2}, "conversations": [{"from": "human", "value": "<video>\nQ?"},
                                                                     {"from": "gpt", "value": "A."}]},
    ])  # fmt: skip
    rows = load_jsonl(path, "sft")
    llava, native = rows[1]["messages"], rows[0]["messages"]
    assert [m["role"] for m in llava] == ["user", "assistant"]
    assert llava[0]["content"][0]["video"] == clip and llava[0]["content"][1]["text"] == "Q?"
    assert native[1]["content"][0]["text"] == "A."

    gspo = load_jsonl(_write_jsonl(tmp_path / "g.jsonl", [
        {"prompt": [{"role": "user", "content": "Q?"}], "answer": "B"},
        {"prompt": [{"role": "user", "content": "When?"}], "answer": [1, 2.5]},
    ]), "gspo")  # fmt: skip
    assert [json.loads(a) for a in gspo["answer"]] == ["B", [1.0, 2.5]]

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "user", "content": "Q"}], "answer": [3]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'answer'"):
        load_jsonl(bad, "gspo")
    missing = _write_jsonl(tmp_path / "m.jsonl", [{"prompt": [{"role": "user", "content": [
        {"type": "video", "video": "nope.mp4"}]}]}])  # fmt: skip
    with pytest.raises(ValueError, match=r"m.jsonl:1: video file not found: .*nope.mp4"):
        load_jsonl(missing, "distill")


def test_collator_labels_cover_exactly_assistant_tokens(processor, videos_dir):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [_clip(videos_dir), {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Several colours."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Vertical bars."}]},
    ]
    batch = InternVideo3SFTCollator(processor)([{"messages": messages}])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    trained = processor.tokenizer.decode(ids[labels != -100])
    assert trained == "Several colours.<|im_end|>Vertical bars.<|im_end|>"
    # Every token of the answers is trained, nothing else (one contiguous span per assistant turn).
    spans = (labels != -100).int().diff().clamp(min=0).sum()
    assert int(spans) == 2
    assert batch["video_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((ids == processor.video_token_id).sum()) == 16


def test_packed_and_unpacked_batches_give_the_same_loss(small_checkpoint, processor, videos_dir):
    model = _model(small_checkpoint).eval()
    rows = _sft_rows(videos_dir)
    padded = InternVideo3SFTCollator(processor)(rows)
    packed = InternVideo3SFTCollator(processor, pack=True, rope_index=model.model.get_rope_index)(rows)
    assert packed["input_ids"].shape[0] == 1 and packed["position_ids"].shape[:2] == (3, 1)
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"] != -100).sum())
    # The boundaries are S + 1 values at most (transformers' padding-free keys), no [S, S] mask (issue 23, item 4).
    total = packed["input_ids"].shape[1]
    assert "attention_mask" not in packed and packed["cu_seq_lens_q"].tolist()[::len(rows)] == [0, total]
    text_sized = {k: v.numel() for k, v in packed.items() if torch.is_tensor(v) and k not in ("pixel_values_videos",)}
    assert max(text_sized.values()) <= 3 * total, text_sized
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**packed).loss
        # the dense block-causal mask (for callers that build one) is the same attention
        dense = {k: v for k, v in packed.items() if not k.startswith(("cu_seq_lens", "max_length"))}
        loss_dense = model(**dense, attention_mask=block_causal_mask([len(r) for r in _sample_ids(padded)])).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_dense, loss_padded, rtol=1e-5, atol=1e-5)
    # Without the boundaries (plain causal attention over the packed row) the second sample sees the first: differs.
    with torch.no_grad():
        leaky = model(**dense).loss
    assert abs(float(leaky) - float(loss_padded)) > 1e-4


def _sample_ids(padded):
    return [row[mask.bool()] for row, mask in zip(padded["input_ids"], padded["attention_mask"])]


def test_packing_with_a_peft_lora_model(small_checkpoint, processor, videos_dir, tmp_path):
    """SFT packing on a PEFT LoRA model (adapters on the language model's attention): the collator's MRoPE positions
    come from the wrapped InternVideo3 model (main resolved `unwrap_model(model).model` to PEFT's LoraModel, which
    has no `get_rope_index`), the packed loss equals the unpacked one and a step trains only the adapters."""
    peft = pytest.importorskip("peft")
    from trl import SFTConfig

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|o_proj)")
    config = SFTConfig(str(tmp_path), per_device_train_batch_size=2, max_steps=1, packing=True, learning_rate=1e-2,
                       **checkpointing(False), **QUIET)  # fmt: skip
    trainer = InternVideo3SFTTrainer(_model(small_checkpoint), args=config, peft_config=lora,
                                     train_dataset=_dataset(tmp_path, _sft_rows(videos_dir), "sft"),
                                     processing_class=processor)  # fmt: skip
    assert isinstance(trainer.model, peft.PeftModel)
    rows = _sft_rows(videos_dir)
    packed = trainer.data_collator(rows)
    padded = InternVideo3SFTCollator(processor)(rows)
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(**packed).loss, trainer.model(**padded).loss, rtol=1e-5, atol=1e-5)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())
    assert any(not torch.equal(after[n], p) for n, p in adapters.items())


# ---------------------------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------------------------
def test_sft_overfits_two_real_clips(small_checkpoint, processor, videos_dir, tmp_path):
    from trl import SFTConfig

    model = _model(small_checkpoint)
    args = SFTConfig(str(tmp_path), max_steps=40, per_device_train_batch_size=2, learning_rate=1e-2,
                     max_length=None, lr_scheduler_type="constant", **checkpointing(False), **QUIET)  # fmt: skip
    losses = _Values("loss", stop=lambda v: v[-1] <= 0.45 * v[0])
    trainer = InternVideo3SFTTrainer(model, args=args, train_dataset=_dataset(tmp_path, _sft_rows(videos_dir), "sft"),
                                     processing_class=processor, callbacks=[losses])  # fmt: skip
    trainer.train()
    assert len(losses.values) <= 40
    assert min(losses.values) <= 0.5 * losses.values[0], losses.values


def test_freezing_options(small_checkpoint):
    model = _model(small_checkpoint)
    freeze(model, vision_tower=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.visual.blocks.") for n in trainable)
    assert any(n.startswith("model.visual.merger.") for n in trainable)
    assert any(n.startswith("model.visual.deepstack_merger_list.") for n in trainable)
    freeze(model, merger=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad and "visual" in n} == set()
    with pytest.raises(ValueError, match="nothing to train"):
        freeze(model, language_model=True)


def test_gradient_checkpointing_gives_the_same_gradients(small_checkpoint, processor, videos_dir):
    batch = InternVideo3SFTCollator(processor)(_sft_rows(videos_dir))
    grads = []
    for enabled in (False, True):
        model = _model(small_checkpoint).train()
        if enabled:
            # What Trainer calls for `gradient_checkpointing=True` (named activation_checkpointing_enable in 5.23+).
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("model.visual.blocks.") for k in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# GSPO
# ---------------------------------------------------------------------------------------------------------------
def _prompt_rows(videos_dir, answer=True):
    # Small clips only: every rollout decodes its prompt's video again.
    rows = []
    for video, question in ((_clip(videos_dir), "What is shown?"),
                            (_clip(videos_dir, "unordered_timestamps.mov"), "Which pattern? A. bars B. noise")):
        row = {"prompt": [{"role": "user", "content": [video, {"type": "text", "text": question}]}]}
        if answer:
            row["answer"] = "B"
        rows.append(row)
    return rows


def _gspo_trainer(small_checkpoint, processor, videos_dir, tmp_path, reward, **overrides):
    values = dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1,
                  steps_per_generation=1, seed=0, **checkpointing(False), **QUIET)  # fmt: skip
    values.update(overrides)
    args = gspo_config(str(tmp_path), **values)
    return InternVideo3GSPOTrainer(_model(small_checkpoint), reward_funcs=[reward], args=args,
                                   train_dataset=_dataset(tmp_path, _prompt_rows(videos_dir), "gspo"),
                                   processing_class=processor)  # fmt: skip


def _even_token_reward(completion_ids, **kwargs):
    """Toy verifiable task: the fraction of even token ids (about 0.5 for a random model)."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def _sequence_logps(trainer, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad(), trainer._videos_of(inputs):
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, inputs["completion_ids"].size(1))
    return (logps * inputs["completion_mask"]).sum(1)


def test_rollout_prompts_are_the_prompts_alone_without_padding(small_checkpoint, processor, videos_dir, tmp_path):
    """TRL takes one unpadded token list per prompt from `_tokenize_prompts` (what transformers' processors give
    without `return_tensors`), pads them itself for generate() with a mask, and sends them as they are to vLLM.
    Ours pads a batch to a tensor: two prompts of different lengths gave the shorter one its pad tokens as prompt
    text (attended to in the rollout and the scoring forward), and vLLM refused the tensor rows."""
    trainer = _gspo_trainer(small_checkpoint, processor, videos_dir, tmp_path, _even_token_reward)
    prompts = [clean_messages(trainer.train_dataset[i]["prompt"]) for i in range(2)]  # as the datasets library gave
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    alone = [processor.apply_chat_template([p], add_generation_prompt=True, tokenize=True, return_dict=True)
             ["input_ids"][0].tolist() for p in prompts]  # fmt: skip
    assert len(alone[0]) != len(alone[1])
    assert [list(ids) for ids in prompt_ids] == alone
    assert all(type(t) is int for ids in prompt_ids for t in ids)


def test_gspo_update_sign_follows_the_advantage(small_checkpoint, processor, videos_dir, tmp_path):
    trainer = _gspo_trainer(small_checkpoint, processor, videos_dir, tmp_path, _even_token_reward)
    rows = [trainer.train_dataset[0]] * 4
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(rows)
    assert len(inputs["pixel_values_videos"]) == 4 and inputs["video_grid_thw"][0].tolist() == [[1, 8, 8]]
    # The scoring forward needs the clip (TRL alone would score the placeholders without it: our model refuses).
    with_video = _sequence_logps(trainer, inputs)
    with pytest.raises(ValueError, match="video placeholder"):
        _sequence_logps(trainer, {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")})

    inputs["advantages"] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this step bypasses
    before = with_video
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
    change = _sequence_logps(trainer, inputs) - before
    assert (change[[0, 2]] > 0).all() and (change[[1, 3]] < 0).all(), change


def test_gspo_short_run_raises_mean_reward(small_checkpoint, processor, videos_dir, tmp_path):
    rewards = _Values("reward")
    # top_k keeps the sampled tokens among a few candidates per position, so a few steps can reorder them.
    trainer = _gspo_trainer(small_checkpoint, processor, videos_dir, tmp_path, _even_token_reward, max_steps=6,
                            learning_rate=3e-2, lr_scheduler_type="constant", top_k=4, max_completion_length=4)  # fmt: skip
    trainer.add_callback(rewards)
    trainer.train()
    first, last = sum(rewards.values[:2]) / 2, sum(rewards.values[-2:]) / 2
    assert last > first + 0.15, rewards.values


# ---------------------------------------------------------------------------------------------------------------
# On-policy distillation
# ---------------------------------------------------------------------------------------------------------------
def _distill_trainer(student, teacher, processor, videos_dir, tmp_path, **overrides):
    from trl import DistillationConfig

    values = dict(per_device_train_batch_size=2, max_completion_length=8, max_steps=1, beta=1.0, seed=0,
                  **checkpointing(False), **QUIET)  # fmt: skip
    values.update(overrides)
    return InternVideo3DistillationTrainer(student, teacher_model=teacher, args=DistillationConfig(str(tmp_path), **values),
                                           train_dataset=_dataset(tmp_path, _prompt_rows(videos_dir, answer=False), "distill"),
                                           processing_class=processor)  # fmt: skip


def test_distillation_teacher_equal_student_gives_zero_loss_and_gradients(small_checkpoint, processor, videos_dir, tmp_path):
    student = _model(small_checkpoint)
    trainer = _distill_trainer(student, copy.deepcopy(student), processor, videos_dir, tmp_path)
    trainer.model.train()
    inputs = trainer._generate_and_score_completions([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert len(inputs["video_grid_thw"]) == 2
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    grads = [p.grad.abs().max() for p in trainer.model.parameters() if p.grad is not None]
    assert grads and max(float(g) for g in grads) < 1e-6


def test_distillation_reverse_kl_falls(small_checkpoint, processor, videos_dir, tmp_path):
    student = _model(small_checkpoint)
    # Another teacher: the student with a perturbed, sharper LM head (reachable, so a few steps show the trend).
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        weight = teacher.lm_head.weight
        weight.add_(torch.randn(weight.shape, generator=generator) * weight.std()).mul_(3.0)
    values = _Values("loss")
    trainer = _distill_trainer(student, teacher, processor, videos_dir, tmp_path, max_steps=5,
                               learning_rate=3e-3, lr_scheduler_type="constant", max_completion_length=4)  # fmt: skip
    trainer.add_callback(values)
    trainer.train()
    assert sum(values.values[-2:]) / 2 < 0.9 * sum(values.values[:2]) / 2, values.values


def _scoring_batch(processor, videos_dir, kinds):
    """Two rows through our processor: a prompt with the given parts ("video", "image") and a 3-token completion;
    returns the BatchFeature, the per-row videos as the rollout mixin keeps them, and TRL's image fields."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    texts, videos, images, per_row = [], [], [], []
    for question in ("What is shown?", "Which pattern is it?"):
        parts = [_clip(videos_dir) if k == "video" else {"type": "image", "image": image} for k in kinds]
        messages = [{"role": "user", "content": [*parts, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": "a test"}]  # fmt: skip
        texts.append(processor.apply_chat_template(messages, tokenize=False).rstrip())
        row_videos = [processor.load_video(_clip(videos_dir)["video"], **BUDGET)] if "video" in kinds else []
        videos += row_videos
        images += [image] if "image" in kinds else []
        per_row.append(len(row_videos))
    batch = processor(text=texts, videos=[f for f, _ in videos] or None, video_metadata=[m for _, m in videos] or None,
                      images=images or None, return_tensors="pt", padding=True)  # fmt: skip
    rows = None
    if "video" in kinds:
        grids = list(torch.split(batch["video_grid_thw"], per_row))
        pixels = list(torch.split(batch["pixel_values_videos"], [int(g.prod(-1).sum()) for g in grids]))
        rows = list(zip(pixels, grids))
    image_fields = {}
    if "image" in kinds:
        image_fields = dict(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], num_images=[1, 1])
    return batch, rows, image_fields


@pytest.mark.parametrize("kinds", [("video",), ("image",), ("image", "video")], ids=["video", "image", "mixed"])
def test_gspo_scoring_sees_images_and_videos(small_checkpoint, processor, videos_dir, tmp_path, kinds):
    """GSPO scores with TRL's own `_get_per_token_logps_and_entropies` (chunk by chunk): its per-token
    log-probabilities equal a direct forward over the same rows, images and videos (main dropped the images)."""
    trainer = _gspo_trainer(small_checkpoint, processor, videos_dir, tmp_path, _even_token_reward)
    model = trainer.model.eval()
    batch, rows, image_fields = _scoring_batch(processor, videos_dir, kinds)
    keep = 3
    with torch.no_grad():
        trainer._row_videos = rows
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, batch["input_ids"], batch["attention_mask"], keep, batch_size=1, **image_fields
        )
        trainer._row_videos = None
        direct = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    ids = batch["input_ids"]
    expected = direct[:, -keep - 1 : -1].log_softmax(-1).gather(-1, ids[:, -keep:, None])[..., 0]
    torch.testing.assert_close(logps, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kinds", [("video",), ("image",)], ids=["video", "image"])
def test_distillation_from_a_transformers_qwen3_vl_teacher(small_checkpoint, processor, videos_dir, tmp_path, kinds):
    """The teacher the README documents, transformers' `Qwen3VLForConditionalGeneration`: its hidden states in
    TRL's distillation path equal a direct teacher forward on the same rows (with the `mm_token_type_ids` Qwen3-VL
    needs), and two training steps run on video prompts."""
    from transformers import Qwen3VLForConditionalGeneration

    from test_fidelity import oracle_config

    torch.manual_seed(0)
    teacher = Qwen3VLForConditionalGeneration(oracle_config()).float().eval()
    student = _model(small_checkpoint)
    trainer = _distill_trainer(student, teacher, processor, videos_dir, tmp_path, max_steps=2)
    batch, rows, image_fields = _scoring_batch(processor, videos_dir, kinds)
    image_fields.pop("num_images", None)
    keep = 3
    types = torch.zeros_like(batch["input_ids"])
    types[batch["input_ids"] == teacher.config.image_token_id] = 1
    types[batch["input_ids"] == teacher.config.video_token_id] = 2
    inputs = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        trainer._row_videos = rows
        hidden = trainer._get_last_hidden_state(teacher, batch["input_ids"], batch["attention_mask"], keep, **image_fields)
        trainer._row_videos = None
        direct = teacher.model(**inputs, mm_token_type_ids=types, use_cache=False).last_hidden_state
    torch.testing.assert_close(hidden, direct[:, :-1][:, -keep:], rtol=1e-4, atol=1e-4)
    if kinds == ("video",):
        values = _Values("loss")
        trainer.add_callback(values)
        trainer.train()
        assert len(values.values) == 2 and all(v == v for v in values.values)  # finite, one per step


# ---------------------------------------------------------------------------------------------------------------
# Examples / console scripts, and two processes
# ---------------------------------------------------------------------------------------------------------------
def test_cli_bad_input_exits_2_with_one_line(tmp_path, small_checkpoint):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "train_sft.py"), "--model", str(small_checkpoint),
         "--data", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: training data file not found")
    assert "Traceback" not in result.stderr


def test_cli_error_during_training_keeps_its_traceback(tmp_path, small_checkpoint, videos_dir):
    """Arguments and data that can be checked up front fail with one `error:` line (above); an error raised once
    training has started (here: a clip that exists but does not decode, met at the first batch) keeps its traceback,
    exits non-zero and leaves no output folder (main turned it into one line with no traceback)."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\\x00\\x00\\x00\\x18ftypmp42" + bytes(range(256)) * 8)
    row = {"messages": [{"role": "user", "content": [{"type": "video", "video": str(broken), **BUDGET},
                                                     {"type": "text", "text": "Describe it."}]},
                        {"role": "assistant", "content": "Nothing."}]}  # fmt: skip
    data = _write_jsonl(tmp_path / "sft.jsonl", [row])
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "train_sft.py"), "--model", str(small_checkpoint),
         "--data", str(data), "--max-steps", "1", "--batch-size", "1", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode not in (0, 2), result.stderr[-2000:]
    assert "Traceback" in result.stderr and "broken.mp4" in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial-*"))


def test_cli_min_pixels_flag_reaches_the_processor(tmp_path, small_checkpoint, videos_dir):
    """A --max-pixels alone below the processor's min_pixels (131,072, from processor_config.json) trains: the
    processor's bound yields to the call's, as qwen-vl-utils and transformers honour it; --min-pixels above
    --max-pixels is refused with one error line naming both; with --min-pixels the same call-level budget trains
    (items carry no pixel budget of their own)."""
    clip = {"type": "video", "video": str(videos_dir / "hevc_128x128.mp4"), "fps": 2, "max_frames": 2}
    row = {"messages": [{"role": "user", "content": [clip, {"type": "text", "text": "Describe the pattern."}]},
                        {"role": "assistant", "content": "A synthetic colour test pattern."}]}  # fmt: skip
    data = _write_jsonl(tmp_path / "sft.jsonl", [row])

    def train(*flags, out):
        command = [sys.executable, str(REPO_ROOT / "examples" / "train_sft.py"), "--model", str(small_checkpoint),
                   "--data", str(data), "--max-steps", "1", "--batch-size", "1", "--no-gradient-checkpointing",
                   "--output-dir", str(tmp_path / out), "--max-pixels", "16384", *flags]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)

    alone = train(out="alone")
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert alone.stdout.strip().splitlines()[-1].startswith("train_loss: first ")
    refused = train("--min-pixels", "32768", out="refused")
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --min-pixels (32768) must be <= --max-pixels (16384)"), last
    assert "Traceback" not in refused.stderr
    trained = train("--min-pixels", "4096", out="trained")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert trained.stdout.strip().splitlines()[-1].startswith("train_loss: first ")


def test_accelerate_two_processes_sft_equal_weights(tmp_path, small_checkpoint, videos_dir):
    """`accelerate launch --num_processes 2` (CPU, gloo) runs the SFT example; both ranks end with equal weights,
    the saved folder loads through the Auto classes and the last line is the contract."""
    data = _write_jsonl(tmp_path / "sft.jsonl", _sft_rows(videos_dir))
    out = tmp_path / "sft-out"
    # CPU only: torchrun starts the ranks (`--multi_gpu` is accelerate's name for it), gloo connects them.
    env = {**os.environ, "INTERNVIDEO3_WEIGHT_DIGEST_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as probe:  # a free port: other test runs may share the machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
         str(REPO_ROOT / "tests" / "accelerate_sft.py"),
         "--model", str(small_checkpoint), "--data", str(data), "--max-steps", "2", "--batch-size", "1",
         "--output-dir", str(out), "--no-gradient-checkpointing", "--learning-rate", "1e-3"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1].startswith("train_loss: first ")
    digests = [(tmp_path / f"rank{r}.digest").read_text() for r in range(2)]
    assert digests[0] == digests[1]

    def digest(model):  # as tests/accelerate_sft.py computes it
        return sum(float(p.detach().double().sum()) for p in model.parameters())

    assert digest(_model(out)) == pytest.approx(float(digests[0]), rel=1e-9)  # the saved folder holds the trained weights
    assert digest(_model(small_checkpoint)) != pytest.approx(float(digests[0]), rel=1e-9)  # and training changed them
