"""One growing conversation on one `InternVideo3LatentCache`: each turn prefills only what the cache lacks (SPEC §12).

A tool-using loop re-sends the whole conversation every turn. Re-prefilling it would cost the whole video again each
time; instead `LatentCacheChat` keeps the token ids its cache holds, renders the new conversation with the processor,
keeps the longest common prefix (cropping the cache when the rendering diverged, e.g. the chat template dropped an
earlier `<think>` block or re-tokenised generated text differently) and calls `generate()` on the whole conversation
with that cache, so only the new suffix is prefilled. The model's continuation path encodes the video items in the
suffix (new clips a tool returned) and continues the MRoPE positions; videos in the kept prefix are never encoded
again. This works for any caller that re-sends the whole history.

The model is reached only through what `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` returns; the
cache class comes from the loaded model's own module.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import GenerationMixin


# ----------------------------------------------------------------------------------------------------------------------
# transformers version differences (kept here, in one place)
# ----------------------------------------------------------------------------------------------------------------------
def _remote_module(model):
    """The module the remote-code model class comes from (under a PEFT wrapper, the wrapped model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sys.modules[type(base).__module__]


def cache_keyword(model) -> str:
    """The keyword `generate()` takes the cache under: `cache` from transformers 5.24 (where `past_key_values` is
    deprecated), `past_key_values` before. The model's own module says (`CACHE_NAME`); remote code older than that
    constant is answered from transformers' `prepare_inputs_for_generation` signature (a feature, not a version)."""
    name = getattr(_remote_module(model), "CACHE_NAME", None)
    if name is None:
        params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
        name = "cache" if "cache" in params else "past_key_values"
    return name


def generated_cache(output):
    """The cache object of a `generate(..., return_dict_in_generate=True)` output (`cache` from 5.24)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def latent_cache_class(model):
    """`InternVideo3LatentCache` from the module the remote-code model was loaded from."""
    return _remote_module(model).InternVideo3LatentCache


# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One model turn.

    text: the decoded new tokens (special tokens removed). token_ids: the new token ids. logits: [1, vocab] float32
    scores of the first new token (for checks against a full re-prefill). prompt_tokens: length of the rendered
    conversation; reused_tokens: of those, the tokens already in the cache (not prefilled again); prefilled_tokens:
    prompt_tokens - reused_tokens; new_tokens: tokens generated; seconds: wall time of the turn.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


class ContextBudgetError(ValueError):
    """The rendered conversation already fills the context budget (message names both token counts)."""


def _item_key(item: dict) -> str:
    """Identity of an image/video item: its JSON, with in-memory sources (arrays, PIL images) by object identity."""
    return json.dumps(
        {k: v for k, v in item.items() if k != "type"}, sort_keys=True, default=lambda o: f"{type(o).__name__}@{id(o)}"
    )


def _vision_spans(ids: list[int], token_id: int, sizes: list[int]) -> list[tuple[int, int]]:
    """[first, last] index of the placeholder tokens of each image/video, in order (`sizes` tokens each)."""
    positions = [i for i, t in enumerate(ids) if t == token_id]
    spans, at = [], 0
    for n in sizes:
        if n:
            spans.append((positions[at], positions[at + n - 1]))
        at += n
    return spans


class LatentCacheChat:
    """A chat over one latent cache that prefills only what the cache does not hold yet (one conversation, batch 1).

    Args:
        model: an InternVideo3 model from `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`.
        processor: its `AutoProcessor` (renders the chat template, decodes videos with PyAV).
        generation_kwargs: defaults for `generate()` (e.g. `do_sample`, `temperature`); greedy by default.

    Attributes:
        cache: the `InternVideo3LatentCache`; `cached_ids`: the token ids it holds, in order.
        prefill_tokens_saved: sum over turns of the prompt tokens taken from the cache instead of prefilled (tokens).
        prefilled_tokens: sum over turns of the prompt tokens actually prefilled (tokens).
    """

    def __init__(self, model, processor, **generation_kwargs):
        self.model = model
        self.processor = processor
        self.generation_kwargs = {"do_sample": False, **generation_kwargs}
        self.cache = latent_cache_class(model)(model.config)
        self.cached_ids: list[int] = []
        # Items whose placeholders the cache holds, per grid key: equal token ids do not mean equal pixels.
        self._cached_items: dict[str, list[str]] = {}
        self.prefill_tokens_saved = 0
        self.prefilled_tokens = 0
        self._videos: dict[str, tuple] = {}
        tokenizer = processor.tokenizer
        self._stop_ids = [t for t in {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id} if t is not None]

    def fork(self) -> "LatentCacheChat":
        """A second conversation on the same model with its own, empty cache (decoded videos are shared)."""
        other = LatentCacheChat(self.model, self.processor, **self.generation_kwargs)
        other._videos = self._videos
        return other

    # ---- rendering ----------------------------------------------------------------------------------------------
    def load_video(self, item: dict):
        """(frames uint8 [T, H, W, 3], metadata) of a `{"type": "video", ...}` item, decoded once per distinct item
        with the processor's PyAV loader (budget keys of the item as in `processor.apply_chat_template`)."""
        key = _item_key(item)
        if key not in self._videos:
            source = next(item[k] for k in ("video", "path", "url", "video_url") if k in item)
            settings = {k: v for k, v in item.items() if k not in ("type", "video", "path", "url", "video_url")}
            self._videos[key] = self.processor.load_video(source, **settings)
        return self._videos[key]

    def encode(self, messages: list[dict], tools: list | None = None):
        """Model inputs of the whole conversation plus a generation prompt: the processor's BatchFeature
        (`input_ids` [1, S], `pixel_values_videos` [N, 1536], `video_grid_thw` [n, 3], image equivalents).

        Videos are decoded once per distinct item (`load_video`); the prompt is rendered by the chat template and
        tokenised by the processor exactly as `processor.apply_chat_template(..., tokenize=True)` does.
        """
        return self._render(messages, tools)[0]

    def _render(self, messages: list[dict], tools: list | None):
        """(`encode`'s BatchFeature, {grid key: identity of each video/image item, in prompt order})."""
        text = self.processor.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        videos, metadata, images = [], [], []
        keys = {"video_grid_thw": [], "image_grid_thw": []}
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for item in content:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "video" or "video" in item:
                    frames, meta = self.load_video(item)
                    videos.append(frames)
                    metadata.append(meta)
                    keys["video_grid_thw"].append(_item_key(item))
                elif item.get("type") in ("image", "image_url") or "image" in item or "image_url" in item:
                    images.append(next(item[k] for k in ("image", "path", "url", "image_url") if k in item))
                    keys["image_grid_thw"].append(_item_key(item))
        inputs = self.processor(
            text=text, videos=videos or None, video_metadata=metadata or None, images=images or None, return_tensors="pt"
        )
        return inputs, keys

    # ---- one turn -----------------------------------------------------------------------------------------------
    def _vision_items(self, ids: list[int], inputs):
        """Per image/video kind: (pixels key, grid key, grids [n, 3], [first, last] placeholder index of each item)."""
        merge = self.processor.merge_size**2
        for pixels_key, grid_key, token_id in (
            ("pixel_values_videos", "video_grid_thw", self.processor.video_token_id),
            ("pixel_values", "image_grid_thw", self.processor.image_token_id),
        ):
            grids = inputs.get(grid_key)
            if grids is not None:
                yield pixels_key, grid_key, grids, _vision_spans(ids, token_id, [int(g.prod()) // merge for g in grids])

    def _reusable_prefix(self, ids: list[int], inputs, keys: dict) -> int:
        """Tokens of `ids` the cache can keep: the common prefix with `cached_ids`, at most len(ids) - 1 (the last
        prompt token is run by `generate()`), never ending inside an image's or video's placeholders (the vision
        tower encodes whole items) and ending before the first item that differs from the one the cache holds at that
        place (another clip can render to the same token ids)."""
        keep = 0
        limit = min(len(ids) - 1, len(self.cached_ids))
        while keep < limit and ids[keep] == self.cached_ids[keep]:
            keep += 1
        for _, grid_key, _, spans in self._vision_items(ids, inputs):
            held = self._cached_items.get(grid_key, [])
            for i, (first, last) in enumerate(spans):
                if first < keep and (first < keep <= last or i >= len(held) or held[i] != keys[grid_key][i]):
                    keep = first
        return keep

    @torch.no_grad()
    def respond(
        self,
        messages: list[dict],
        tools: list | None = None,
        max_new_tokens: int = 256,
        max_context_tokens: int | None = None,
        **generation_kwargs,
    ) -> Reply:
        """Continue the conversation by one assistant turn, reusing the cache for the prefix it already holds.

        Args:
            messages: the whole conversation (chat-template messages; content items `{"type": "video", "video":
                path, "fps", "video_start", "video_end", "max_pixels", ...}` / `{"type": "text", "text"}`).
            tools: JSON schemas (or documented functions) for the chat template's `<tools>` block.
            max_new_tokens: upper bound on generated tokens for this turn.
            max_context_tokens: upper bound on prompt + generated tokens (None: no bound); generation is shortened
                to fit.

        Returns:
            `Reply` with the text, the first-token logits and the token accounting of the turn.

        Raises:
            ContextBudgetError: the prompt alone has `max_context_tokens` tokens or more (nothing is prefilled).
            ValueError, VideoLoadError, FileNotFoundError: from the processor for bad messages or videos.
        """
        start = time.perf_counter()
        inputs, keys = self._render(messages, tools)
        ids = inputs["input_ids"][0].tolist()
        if max_context_tokens is not None:
            if len(ids) >= max_context_tokens:
                raise ContextBudgetError(
                    f"the conversation has {len(ids)} tokens, the context budget is {max_context_tokens} tokens"
                )
            max_new_tokens = min(max_new_tokens, max_context_tokens - len(ids))
        keep = self._reusable_prefix(ids, inputs, keys)
        self._truncate(keep)
        self.cached_ids = ids[:keep]
        try:
            return self._continue(inputs, keys, ids, keep, max_new_tokens, start, generation_kwargs)
        except BaseException:
            # A turn is all or nothing: an error or Ctrl-C mid-prefill or mid-decode leaves layers of different
            # lengths; back to the prefix this turn started from, so the next turn and the side chats still work.
            self._truncate(keep)
            self.cached_ids = ids[:keep]
            raise

    def _truncate(self, length: int) -> None:
        """Crop every cache layer to at most `length` tokens (layer by layer: after an interrupted forward the layers
        may hold different lengths). `crop(-k)`, k > 0, drops the last k tokens on every transformers release."""
        for layer in self.cache.layers:
            drop = int(layer.get_seq_length()) - length
            if drop > 0:
                layer.crop(-drop)

    def _continue(self, inputs, keys, ids, keep, max_new_tokens, start, generation_kwargs) -> Reply:
        """`respond` after the cache holds `ids[:keep]`: `generate()` over the whole conversation with that cache.

        The model's own continuation path does the rest (transformers' `generate()` runs only the uncached tokens):
        of the conversation's images and videos it encodes those whose placeholders are uncached, and it continues the
        MRoPE positions of the cached ones (`get_rope_index` over the whole conversation, `rope_deltas` updated).
        """
        model, device = self.model, self.model.device
        names = set(getattr(self.processor, "model_input_names", ())) | {"input_ids", "attention_mask"}
        model_inputs = {k: v.to(device) for k, v in inputs.items() if k in names and isinstance(v, torch.Tensor)}
        settings = {**self.generation_kwargs, **generation_kwargs}
        settings.setdefault("eos_token_id", self._stop_ids)
        out = model.generate(
            **model_inputs,
            max_new_tokens=max_new_tokens,
            return_dict_in_generate=True,
            output_logits=True,
            **{cache_keyword(model): self.cache},
            **settings,
        )
        self.cache = generated_cache(out)
        sequence = out.sequences[0].tolist()
        self.cached_ids = sequence[: int(self.cache.get_seq_length())]
        self._cached_items = {
            grid_key: [keys[grid_key][i] for i, (_, last) in enumerate(spans) if last < len(self.cached_ids)]
            for _, grid_key, _, spans in self._vision_items(ids, inputs)
        }
        new_ids = sequence[len(ids) :]
        self.prefill_tokens_saved += keep
        self.prefilled_tokens += len(ids) - keep
        return Reply(
            text=self.processor.decode(new_ids, skip_special_tokens=True),
            token_ids=new_ids,
            logits=out.logits[0].float().cpu() if out.logits else None,
            prompt_tokens=len(ids),
            reused_tokens=keep,
            prefilled_tokens=len(ids) - keep,
            new_tokens=len(new_ids),
            seconds=time.perf_counter() - start,
        )

    def cache_tokens(self) -> int:
        """Tokens the latent cache holds now."""
        return int(self.cache.get_seq_length())

    def cache_bytes(self) -> int:
        """Bytes the latent cache holds now (all layers, int)."""
        return int(self.cache.nbytes())
