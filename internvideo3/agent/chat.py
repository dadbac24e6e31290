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
import re
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


def _item_kind(item) -> str | None:
    """"video" / "image" for a vision content item (the processor's rules), None for anything else."""
    if not isinstance(item, dict):
        return None
    if item.get("type") == "video" or "video" in item:
        return "video"
    if item.get("type") in ("image", "image_url") or "image" in item or "image_url" in item:
        return "image"
    return None


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
        # Per distinct item, from one processor call on that item alone: (kind, grid [3], its placeholder expanded to
        # the text the processor puts in the prompt, the item). Shared with forks, like the decoded frames.
        self._encoded: dict[str, tuple[str, torch.Tensor, str, dict]] = {}
        # Pixel rows [N, 1536] of items this chat has encoded but its cache does not hold yet (dropped once it does:
        # 4 bytes per value, the largest thing a turn makes).
        self._pixels: dict[str, torch.Tensor] = {}
        tokenizer = processor.tokenizer
        self._stop_ids = [t for t in {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id} if t is not None]

    def fork(self) -> "LatentCacheChat":
        """A second conversation on the same model with its own, empty cache (decoded videos are shared)."""
        other = LatentCacheChat(self.model, self.processor, **self.generation_kwargs)
        other._videos, other._encoded = self._videos, self._encoded
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
        """Model inputs of the whole conversation plus a generation prompt: `input_ids` [1, S], `attention_mask`
        [1, S], `pixel_values_videos` [N, 1536] float32, `video_grid_thw` [n, 3] (image equivalents) of every item.

        The token ids are those of `processor.apply_chat_template(..., tokenize=True)`; each distinct video is
        decoded once (`load_video`) and each distinct item run through the processor once per conversation.
        """
        inputs, keys = self._render(messages, tools)
        return {**inputs, **self._pixels_of(inputs, keys, keep=0)}

    def _slot(self, kind: str) -> str:
        """The placeholder the chat template renders for one image/video item."""
        tokenizer = self.processor.tokenizer
        pad = self.processor.video_token if kind == "video" else self.processor.image_token
        start, end = (tokenizer.convert_ids_to_tokens(self.processor.vision_start_token_id),
                      tokenizer.convert_ids_to_tokens(self.processor.vision_end_token_id))  # fmt: skip
        return start + pad + end

    def _encode_item(self, kind: str, key: str, item: dict) -> None:
        """Run the processor on one item alone (its placeholder as the text): keeps its grid, its expanded placeholder
        (timestamps and pads, as the processor writes them into a whole prompt) and its pixel rows."""
        if kind == "video":
            frames, meta = self.load_video(item)
            out = self.processor(text=self._slot(kind), videos=[frames], video_metadata=[meta], return_tensors="pt")
            grid, pixels = out["video_grid_thw"][0], out["pixel_values_videos"]
        else:
            source = next(item[k] for k in ("image", "path", "url", "image_url") if k in item)
            out = self.processor(text=self._slot(kind), images=[source], return_tensors="pt")
            grid, pixels = out["image_grid_thw"][0], out["pixel_values"]
        # special tokens and byte-level BPE decode to exactly the text they came from
        text = self.processor.tokenizer.decode(
            out["input_ids"][0].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        self._encoded[key] = (kind, grid, text, dict(item))
        self._pixels[key] = pixels

    def _render(self, messages: list[dict], tools: list | None):
        """(`input_ids`, `attention_mask`, `video_grid_thw` / `image_grid_thw` of every item; no pixels),
        {grid key: identity of each video/image item, in prompt order}.

        The template's text with each item's placeholder replaced by its expansion, tokenised once as the processor
        does (a split tokenisation could merge differently at the boundaries); items not seen before are encoded.

        Raises:
            ValueError: placeholders and items differ in number, or a placeholder was typed into the text.
        """
        text = self.processor.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        order = {"video": [], "image": []}
        for message in messages:
            content = message.get("content")
            for item in content if isinstance(content, list) else ():
                kind = _item_kind(item)
                if kind is None:
                    continue
                key = _item_key(item)
                if key not in self._encoded:
                    self._encode_item(kind, key, item)
                order[kind].append(key)
        slots = {self._slot(kind): kind for kind in order}
        pending = {kind: iter(keys) for kind, keys in order.items()}
        found = {kind: 0 for kind in order}

        def expand(match) -> str:
            kind = slots[match.group(0)]
            found[kind] += 1
            key = next(pending[kind], None)
            return match.group(0) if key is None else self._encoded[key][2]

        text = re.sub("|".join(re.escape(slot) for slot in slots), expand, text)
        for kind, keys in order.items():
            if found[kind] != len(keys):
                raise ValueError(f"the text has {found[kind]} {kind} placeholders but {len(keys)} {kind}s were given")
        inputs = dict(self.processor.tokenizer(text, return_tensors="pt"))
        merge = self.processor.merge_size**2
        for kind, grid_key, token_id in (
            ("video", "video_grid_thw", self.processor.video_token_id),
            ("image", "image_grid_thw", self.processor.image_token_id),
        ):
            grids = [self._encoded[key][1] for key in order[kind]]
            expected = sum(int(g.prod()) for g in grids) // merge
            found_tokens = int((inputs["input_ids"] == token_id).sum())
            if found_tokens != expected:
                raise ValueError(
                    f"the tokenized text has {found_tokens} {kind} placeholder tokens but the {kind}s give {expected} "
                    f"visual features (a placeholder typed into the text?)"
                )
            if grids:
                inputs[grid_key] = torch.stack(grids)
        return inputs, {"video_grid_thw": order["video"], "image_grid_thw": order["image"]}

    def _pixels_of(self, inputs, keys: dict, keep: int) -> dict:
        """`pixel_values_videos` / `pixel_values` of the items whose placeholders start at `keep` or later (the ones
        the cache lacks), in prompt order; items whose rows were dropped are run through the processor again."""
        ids = inputs["input_ids"][0].tolist()
        out = {}
        for pixels_key, grid_key, _, spans in self._vision_items(ids, inputs):
            rows = []
            for key, (first, _) in zip(keys[grid_key], spans):
                if first >= keep:
                    if key not in self._pixels:  # encoded by a fork, or cropped out of the cache since
                        kind, _, _, item = self._encoded[key]
                        self._encode_item(kind, key, item)
                    rows.append(self._pixels[key])
            if rows:
                out[pixels_key] = rows[0] if len(rows) == 1 else torch.cat(rows)
        return out

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
        it encodes the pixels given (those of the items whose placeholders are uncached) and continues the MRoPE
        positions from every item's grid (`get_rope_index` over the whole conversation, `rope_deltas` updated).
        """
        model, device = self.model, self.model.device
        # Every item's grid (the model continues the MRoPE positions over the whole conversation from them), the
        # pixels of the uncached items only (the cached ones are never encoded again, so never patchified again).
        model_inputs = {k: v.to(device) for k, v in {**inputs, **self._pixels_of(inputs, keys, keep)}.items()}
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
        for held in self._cached_items.values():
            for key in held:
                self._pixels.pop(key, None)
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
