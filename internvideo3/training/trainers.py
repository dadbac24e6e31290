"""Thin subclasses of TRL's trainers for InternVideo3 (SPEC §11): what our model needs and TRL does not do.

TRL 1.16 reads images only (`image` / `images` columns, `{"type": "image"}` parts). Our rows carry videos inside the
messages, so:

- `InternVideo3SFTTrainer` (`trl.SFTTrainer`): our processor and chat template through `InternVideo3SFTCollator`
  (assistant-only labels, optional packing with per-sample MRoPE positions and a block-causal mask); TRL's loss,
  fused LM head, metrics and loop are unchanged.
- `InternVideo3GSPOTrainer` (`trl.GRPOTrainer`): GSPO is GRPO with `importance_sampling_level="sequence"`
  (`gspo_config`). Prompts are tokenized by our processor, which decodes the videos; each rollout row keeps its
  `pixel_values_videos` / `video_grid_thw` so the log-probability forwards see the same clip as `generate()`;
  TRL's own scoring method runs (images included), with each chunk's videos added by a forward pre-hook.
- `InternVideo3DistillationTrainer` (`trl.DistillationTrainer`): on-policy distillation, `beta=1.0` = reverse KL
  (student ‖ teacher) on the student's own samples; the teacher sees the same videos and images, and a
  transformers Qwen3-VL teacher gets the `mm_token_type_ids` its MRoPE needs.

Rollouts use `generate()`, which fills our latent cache (`InternVideo3LatentCache`) by default, or with
`use_vllm=True, vllm_mode="colocate"` the plugin's engine, which gets each video prompt's frames (`_VideoEngine`).
The model is reached only through the Auto classes (`trust_remote_code=True`): it lives in flat remote-code files,
not in this package.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from contextlib import contextmanager

import torch
from transformers import TrainingArguments
from trl import DistillationConfig, DistillationTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

import vision_settings_internvideo3 as vision_settings

from .collator import InternVideo3SFTCollator
from .data import clean_messages



def checkpointing(enabled: bool, **kwargs) -> dict:
    """Config keywords that switch activation (gradient) checkpointing on or off: `activation_checkpointing` where
    transformers has it (>= 5.23, where `gradient_checkpointing` is a deprecated alias that warns), else
    `gradient_checkpointing`. `kwargs` go to `*_checkpointing_kwargs`. The one version difference of this package."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    out = {f"{prefix}_checkpointing": enabled}
    if kwargs:
        out[f"{prefix}_checkpointing_kwargs"] = kwargs
    return out


def freeze(model, vision_tower: bool = False, merger: bool = False, language_model: bool = False) -> dict[str, int]:
    """Set `requires_grad=False` on parts of an InternVideo3 model (or a text-only one, which has no vision parts).

    vision_tower: `model.visual` except the mergers; merger: `visual.merger` and `visual.deepstack_merger_list`
    (they map vision features into the language model); language_model: the decoder, its embeddings and `lm_head`.
    Returns {"trainable": n, "frozen": m} parameter counts. Raises ValueError when everything would be frozen.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    visual = getattr(base, "visual", None)
    for name, param in base.named_parameters():
        in_visual = visual is not None and (name.startswith("model.visual.") or name.startswith("visual."))
        is_merger = in_visual and (".merger." in name or ".deepstack_merger_list." in name)
        if (in_visual and not is_merger and vision_tower) or (is_merger and merger) or (not in_visual and language_model):
            param.requires_grad_(False)
    counts = {"trainable": 0, "frozen": 0}
    for param in base.parameters():
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    if counts["trainable"] == 0:
        raise ValueError("freezing vision tower, merger and language model leaves nothing to train")
    return counts


class InternVideo3SFTTrainer(SFTTrainer):
    """`trl.SFTTrainer` on rows `{"messages": [...]}` with videos in the messages (see `data.load_jsonl`).

    Args (besides SFTTrainer's): `video_kwargs` (call-level video budget for the collator), `freeze_vision_tower`,
    `freeze_merger`, `freeze_language_model`. `args.packing=True` packs each batch into one row through our collator
    (TRL's own packing tokenizes text only); `args.max_length` bounds each sample (see the collator).
    """

    def __init__(
        self,
        model,
        args: SFTConfig | None = None,
        train_dataset=None,
        processing_class=None,
        video_kwargs: dict | None = None,
        freeze_vision_tower: bool = False,
        freeze_merger: bool = False,
        freeze_language_model: bool = False,
        **kwargs,
    ):
        args = args if args is not None else SFTConfig("internvideo3-sft")
        if processing_class is None:
            raise ValueError("processing_class is required: AutoProcessor.from_pretrained(path, trust_remote_code=True)")
        if any((freeze_vision_tower, freeze_merger, freeze_language_model)):
            freeze(model, freeze_vision_tower, freeze_merger, freeze_language_model)
        pack = bool(args.packing)
        collator = kwargs.pop("data_collator", None) or InternVideo3SFTCollator(
            processing_class, max_length=args.max_length, pack=pack, video_kwargs=dict(video_kwargs or {})
        )
        # Our collator renders, tokenizes, labels and packs; TRL's text-only preparation and padding-free packing
        # must stay off (they would tokenize the messages without the videos).
        args.packing = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        args.packing = pack
        if getattr(collator, "pack", False) and collator.rope_index is None:
            # The InternVideo3 model under any wrapper (DDP / FSDP by accelerate, then a PEFT model).
            model = self.accelerator.unwrap_model(self.model)
            model = model.get_base_model() if hasattr(model, "get_base_model") else model
            collator.rope_index = model.model.get_rope_index

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs.get("attention_mask")
        before = self._total_train_tokens
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if mask is None and "cu_seq_lens_q" in inputs and model.training:
            # TRL counts a padding-free batch's tokens as position_ids.size(1): 1 for our MRoPE positions [3, 1, S].
            tokens = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens = before + self.accelerator.gather_for_metrics(tokens).sum().item() // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def _set_signature_columns_if_needed(self):
        # The raw rows reach our collator; TRL's default keeps only pre-tokenized columns.
        if self._signature_columns is None:
            self._signature_columns = ["messages"]


class _VideoRolloutMixin:
    """Keeps each rollout row's video tensors next to its tokens, for trainers that tokenize prompts themselves.

    `_tokenize_prompts` (TRL) renders prompts with our processor, which decodes the videos and returns the batch's
    `pixel_values_videos` [N, 1536] and `video_grid_thw` [n, 3]; TRL forwards them to `generate()` but not to its
    scoring forwards. We split them per row (the prompt's video parts, in order), store them in the generation
    batch as lists (TRL shuffles and splits lists with the rows) and add them to every scoring forward.
    """

    _row_videos: list | None = None

    def _tokenize_prompts(self, prompts: list):
        prompts = [clean_messages(p) if isinstance(p, list) else p for p in prompts]
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        prompt_ids = self._unpadded(prompt_ids)
        self._row_videos = None
        if "video_grid_thw" in fields:
            grids = fields["video_grid_thw"]
            counts = [sum(1 for m in p for part in m["content"] if isinstance(part, dict) and part.get("type") == "video")
                      for p in prompts]  # fmt: skip
            grid_rows = list(torch.split(grids, counts))
            pixel_rows = list(torch.split(fields["pixel_values_videos"], [int(g.prod(-1).sum()) for g in grid_rows]))
            self._row_videos = [(p, g) for p, g in zip(pixel_rows, grid_rows)]
            if getattr(self, "use_vllm", False):
                self._vllm_video_rows(prompts, prompt_ids)
        return prompt_ids, images, fields

    def _vllm_video_rows(self, prompts: list, prompt_ids: list[list[int]]) -> None:
        """Record, for each video prompt, what the colocated engine must get in place of TRL's row: the prompt with
        unexpanded placeholders and each video's frames and metadata (`_VideoEngine`).

        TRL sends vLLM the token ids and images only (trl/generation/vllm_generation.py, `generate`), and vLLM expands
        placeholders itself, so the expanded ids alone would reach the engine as text. The frames are decoded by the
        processor's own `decode` under the same merged settings as in `apply_chat_template` (the same frames; a clip
        file is decoded a second time, once per distinct file and settings), with the metadata our vLLM video loader
        sends (`resized`, no resampling).
        Raises NotImplementedError in TRL's server mode (its client sends images only) and with vLLM tensor
        parallelism (TRL gathers the group's prompts into one engine call)."""
        if getattr(self, "vllm_mode", None) != "colocate":
            raise NotImplementedError("use_vllm=True with video prompts needs vllm_mode='colocate': TRL's vLLM server "
                                      "client sends images only; or use use_vllm=False")
        engine = self.vllm_generation
        if getattr(engine, "tensor_parallel_size", 1) > 1:
            # TRL gathers the prompts of the whole TP group into one engine call; the frames are recorded per rank
            raise NotImplementedError("use_vllm=True with video prompts and vllm_tensor_parallel_size > 1")
        if not isinstance(engine.llm, _VideoEngine):
            engine.llm = _VideoEngine(engine.llm)
        engine.llm.rows.clear()  # these prompts are the next engine call's
        processor = self.processing_class
        video_processor = processor.video_processor
        decoded = {}  # (file, settings) -> (frames, metadata): TRL repeats each prompt num_generations times
        for prompt, ids in zip(prompts, prompt_ids):
            items = [part for m in prompt for part in m["content"] if isinstance(m["content"], list)
                     and isinstance(part, dict) and part.get("type") == "video"]  # fmt: skip
            if not items:
                continue
            text = processor.apply_chat_template(prompt, tools=getattr(self, "tools", None) or None,
                                                 chat_template=self.chat_template, add_generation_prompt=True,
                                                 tokenize=False, **self.chat_template_kwargs)  # fmt: skip
            videos = []
            for item in items:
                settings = video_processor.merge_settings(
                    {k: item[k] for k in vision_settings.VIDEO_SETTING_KEYS if k in item}
                )
                source = next(item[k] for k in ("video", "path", "url", "video_url") if item.get(k) is not None)
                source = source.get("url") if isinstance(source, dict) else source  # as the processor reads it
                key = (source, repr(sorted(settings.items()))) if isinstance(source, (str, os.PathLike)) else None
                if key is None or key not in decoded:
                    frames, meta = video_processor.decode(source, settings)
                    decoded[key] = (frames, dataclasses.asdict(meta) | {"do_sample_frames": False})
                videos.append(decoded[key])
            # Two clips of equal length and size under the same text have equal prompt ids: one entry per prompt,
            # in order, which is the order TRL sends the rows in.
            engine.llm.rows.setdefault(tuple(ids), []).append({
                "prompt_token_ids": processor.tokenizer(text, add_special_tokens=False)["input_ids"],
                "multi_modal_data": {"video": videos},
            })

    def _unpadded(self, prompt_ids) -> list[list[int]]:
        """One unpadded list of token ids per prompt, as TRL expects (it pads them itself, with a mask, for
        generate(), and sends them as they are to vLLM). Our processor pads a batch into a tensor [B, S] (TRL drops
        its attention mask): the padding is the run of pad tokens on the processor's padding side, never part of a
        chat prompt (it starts with a role header and ends with the generation prompt)."""
        pad = self.processing_class.tokenizer.pad_token_id
        left = getattr(self.processing_class, "padding_side", "left") == "left"
        rows = []
        for ids in prompt_ids:
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            keep = len(ids)
            while keep and ids[len(ids) - keep if left else keep - 1] == pad:
                keep -= 1
            rows.append(ids[len(ids) - keep:] if left else ids[:keep])
        return rows

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self._row_videos is not None:
            output["pixel_values_videos"] = [p for p, _ in self._row_videos]
            output["video_grid_thw"] = [g for _, g in self._row_videos]
        self._row_videos = None
        return output

    @contextmanager
    def _videos_of(self, inputs: dict):
        """Within the block, scoring forwards use the micro-batch's per-row videos."""
        previous = self._row_videos
        if "video_grid_thw" in inputs:
            self._row_videos = list(zip(inputs["pixel_values_videos"], inputs["video_grid_thw"]))
        try:
            yield
        finally:
            self._row_videos = previous

    def _video_inputs(self, start: int, end: int) -> dict:
        """pixel_values_videos / video_grid_thw of rows [start, end) (empty when the rows have no video)."""
        if not self._row_videos:
            return {}
        rows = self._row_videos[start:end]
        device = self.accelerator.device
        return {
            "pixel_values_videos": torch.cat([p for p, _ in rows]).to(device),
            "video_grid_thw": torch.cat([g for _, g in rows]).to(device),
        }

    @contextmanager
    def _rows_into(self, *modules):
        """While the block runs, each forward TRL makes through one of `modules` gets its rows' videos and, for a
        module whose forward names `mm_token_type_ids` (transformers' Qwen3-VL, e.g. as the teacher), the token types.

        TRL's scoring methods (`_get_per_token_logps_and_entropies`, `_get_last_hidden_state`) pass the image fields
        themselves and run the rows in order, whole or in chunks; a forward pre-hook adds the rest, so TRL's own
        methods run unchanged. Token types are built from `input_ids` as TRL builds them for tool images (0 text, 1
        `image_token_id`, 2 `video_token_id`; Qwen3-VL needs them for MRoPE whenever pixels are passed). A forward
        that already has the field (a nested call, or TRL passing it) is left alone.
        """
        seen = [0]

        def add_rows(module, args, kwargs):
            ids = kwargs.get("input_ids")
            if ids is None:
                return None
            if self._row_videos and kwargs.get("pixel_values_videos") is None:
                kwargs.update(self._video_inputs(seen[0], seen[0] + ids.size(0)))
                seen[0] += ids.size(0)
            takes_types = "mm_token_type_ids" in inspect.signature(module.forward).parameters
            has_pixels = kwargs.get("pixel_values") is not None or kwargs.get("pixel_values_videos") is not None
            if takes_types and has_pixels and kwargs.get("mm_token_type_ids") is None:
                config = module.config
                types = torch.zeros_like(ids)
                types[ids == config.image_token_id] = 1
                types[ids == config.video_token_id] = 2
                kwargs["mm_token_type_ids"] = types
            return args, kwargs

        handles = [m.register_forward_pre_hook(add_rows, with_kwargs=True) for m in dict.fromkeys(modules) if m is not None]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class _VideoEngine:
    """TRL's colocated `vllm.LLM` with video prompts: `generate` swaps each row whose token ids are a recorded video
    prompt for its unexpanded prompt and frames (`_VideoRolloutMixin._vllm_video_rows`), keeps the row's images, and
    checks that the engine expanded it to exactly the trainer's prompt ids (what the scoring forwards see). Every
    other attribute is the engine's (TRL's weight sync, sleep and wake-up reach it unchanged).

    Raises RuntimeError when the engine's prompt ids differ from the trainer's (the rollout would be scored on
    another prompt)."""

    def __init__(self, llm):
        self.llm = llm
        self.rows: dict[tuple[int, ...], list[dict]] = {}  # prompt ids -> one entry per such prompt, in order

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def generate(self, prompts, *args, **kwargs):
        sent, expected = [], []
        for row in prompts:
            ids = tuple(row["prompt_token_ids"])
            video = self.rows[ids].pop(0) if self.rows.get(ids) else None
            if video is not None:
                images = (row.get("multi_modal_data") or {}).get("image")
                video = {**video, "multi_modal_data": {**video["multi_modal_data"],
                                                       **({"image": images} if images is not None else {})}}
            sent.append(video or row)
            expected.append(ids)
        outputs = self.llm.generate(sent, *args, **kwargs)
        for output, ids in zip(outputs, expected):
            if tuple(output.prompt_token_ids) != ids:
                raise RuntimeError(f"the engine expanded a rollout prompt to other token ids than the trainer's "
                                   f"processor ({len(output.prompt_token_ids)} and {len(ids)} tokens): the rollout "
                                   "would be scored on another prompt")
        self.rows.clear()
        return outputs


def gspo_config(output_dir: str, **overrides) -> GRPOConfig:
    """`GRPOConfig` set to GSPO (SPEC §11): sequence-level ratio s_i = (π_θ/π_old)^(1/|y_i|), clipped objective with
    ε = 3e-4 / 4e-4, no KL term, group-normalised advantages. `steps_per_generation` > `gradient_accumulation_steps`
    makes the update off-policy, where the ratio matters. Any field can be overridden."""
    values = dict(
        importance_sampling_level="sequence",
        loss_type="grpo",
        beta=0.0,
        epsilon=3e-4,
        epsilon_high=4e-4,
        scale_rewards="group",
    )
    values.update(overrides)
    return GRPOConfig(output_dir=output_dir, **values)


class InternVideo3GSPOTrainer(_VideoRolloutMixin, GRPOTrainer):
    """`trl.GRPOTrainer` (configure GSPO with `gspo_config`) on rows `{"prompt": [...messages with videos...],
    "answer": ...}`; reward functions get the `answer` column (see `rewards`). Freezing: `freeze_vision_tower`,
    `freeze_merger`, `freeze_language_model` keyword arguments."""

    def __init__(self, model, reward_funcs, args=None, freeze_vision_tower=False, freeze_merger=False,
                 freeze_language_model=False, **kwargs):  # fmt: skip
        if any((freeze_vision_tower, freeze_merger, freeze_language_model)):
            freeze(model, freeze_vision_tower, freeze_merger, freeze_language_model)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)

    def _compute_loss(self, model, inputs):
        with self._videos_of(inputs):
            return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        # TRL's method (it slices the image fields per chunk), with each chunk's videos added to its forward.
        with self._rows_into(self.accelerator.unwrap_model(model)):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)


class InternVideo3DistillationTrainer(_VideoRolloutMixin, DistillationTrainer):
    """`trl.DistillationTrainer` on rows `{"prompt": [...messages with videos...]}`: the student samples, the teacher
    scores the same tokens (and sees the same videos); `DistillationConfig(beta=1.0)` is the per-token reverse KL
    (student ‖ teacher). The teacher may be any causal LM with the same tokenizer (e.g. the GQA source of a converted
    student, loaded with transformers' own classes). Freezing keywords as the other trainers."""

    def __init__(self, model, teacher_model=None, args: DistillationConfig | None = None, freeze_vision_tower=False,
                 freeze_merger=False, freeze_language_model=False, **kwargs):  # fmt: skip
        if any((freeze_vision_tower, freeze_merger, freeze_language_model)):
            freeze(model, freeze_vision_tower, freeze_merger, freeze_language_model)
        super().__init__(model=model, teacher_model=teacher_model, args=args, **kwargs)

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        with self._videos_of(inputs):
            return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)

    def _get_last_hidden_state(self, unwrapped_model, *args, **kwargs):
        # TRL's backbone call (student and teacher), with the rows' videos and, for a transformers Qwen3-VL teacher,
        # `mm_token_type_ids`. TRL picks the backbone by release (`base_model`, or `.model` under PEFT or on 4.x VLMs):
        # the hook sits on both candidates.
        model = unwrapped_model.get_base_model() if hasattr(unwrapped_model, "get_base_model") else unwrapped_model
        with self._rows_into(model.base_model, getattr(model, "model", None)):
            return super()._get_last_hidden_state(unwrapped_model, *args, **kwargs)
