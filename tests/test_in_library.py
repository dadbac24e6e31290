"""Behaving like an in-library transformers model (issue 11): assisted generation, Trainer's loss arguments,
attention weights, output flags from the config, the vision feature getters, and embeddings-only inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from configuration_internvideo3 import InternVideo3TextConfig
from internvideo3.convert.small_checkpoint import SMALL_TEXT_CONFIG, small_model
from modeling_internvideo3 import CACHE_NAME, InternVideo3TextForCausalLM
from test_modeling import text_batch, video_batch


def text_model(seed: int) -> InternVideo3TextForCausalLM:
    torch.manual_seed(seed)
    config = InternVideo3TextConfig(**SMALL_TEXT_CONFIG, vocab_size=512, eos_token_id=2)  # 4.57 prompt lookup needs one
    return InternVideo3TextForCausalLM(config).float().eval()


def multimodal_model(seed: int):
    return small_model(seed=seed).float().eval()


HEADS = {"text": text_model, "multimodal": multimodal_model}


def prompt(head: str) -> dict:
    """One prompt (assisted generation takes batch size 1): text for the text head, text + video for the other."""
    if head == "text":
        return dict(input_ids=torch.tensor([[11, 12, 13, 14, 15, 16, 11, 12]]))
    batch = video_batch()
    row = batch["attention_mask"][1].bool()
    return dict(input_ids=batch["input_ids"][1:, row], pixel_values_videos=batch["pixel_values_videos"][32:],
                video_grid_thw=batch["video_grid_thw"][1:])  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# 1. Assisted generation: crop follows each release's own DynamicLayer.crop
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("assistant", ["itself", "another", "prompt_lookup"])
def test_assisted_generation_equals_greedy(head, assistant):
    """Every candidate accepted (the model as its own assistant: crop of 0 tokens), some rejected (another model:
    crop of n > 0), and prompt lookup: greedy's tokens and a cache holding exactly the sequence but the last token."""
    model = HEADS[head](0)
    inputs = prompt(head)
    extra = {"itself": dict(assistant_model=model), "another": dict(assistant_model=HEADS[head](1)),
             "prompt_lookup": dict(prompt_lookup_num_tokens=3)}[assistant]  # fmt: skip
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        assisted = model.generate(**inputs, max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
                                  **extra)  # fmt: skip
    # transformers 4.57's prompt lookup may accept one candidate past max_new_tokens (Llama does the same there)
    sequences = assisted.sequences[:, : greedy.shape[1]]
    assert torch.equal(sequences, greedy), (assisted.sequences, greedy)
    assert assisted[CACHE_NAME].get_seq_length() == assisted.sequences.shape[1] - 1


# ----------------------------------------------------------------------------------------------------------------------
# 2. Trainer's loss arguments
# ----------------------------------------------------------------------------------------------------------------------


def uneven_examples() -> list[dict]:
    """Four rows of 10 tokens whose label counts differ (2 to 9), so a mean of micro-batch means is wrong."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for labelled in (9, 2, 5, 3):
        ids = torch.randint(0, 512, (10,), generator=g)
        labels = ids.clone()
        labels[: 10 - labelled] = -100
        rows.append(dict(input_ids=ids, attention_mask=torch.ones(10, dtype=torch.long), labels=labels))
    return rows


def one_sgd_step(tmp_path, batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
    """The weight change of one Trainer step with SGD at learning rate 1 (= minus the gradient)."""
    model = text_model(0).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / f"run-{batch_size}x{accumulation}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1.0, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=uneven_examples()).train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_gradient_accumulation_gives_the_whole_batch_gradient(tmp_path):
    whole = one_sgd_step(tmp_path, batch_size=4, accumulation=1)
    split = one_sgd_step(tmp_path, batch_size=1, accumulation=4)
    assert max(float(whole[n].abs().max()) for n in whole) > 1e-4, "the step must move the weights"
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("head", HEADS)
def test_loss_honours_num_items_in_batch_and_shift_labels(head):
    model = HEADS[head](0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = ids.clone()
    shift_labels = torch.tensor([[7, 7, 7, 7, -100, -100]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        plain = model(input_ids=ids, labels=labels).loss
        summed = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(10)).loss
        shifted = model(input_ids=ids, labels=labels, shift_labels=shift_labels).loss
    torch.testing.assert_close(plain, F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]))
    torch.testing.assert_close(summed, F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum") / 10)
    torch.testing.assert_close(shifted, F.cross_entropy(logits[0].float(), shift_labels[0], ignore_index=-100))
    assert model.accepts_loss_kwargs is True


# ----------------------------------------------------------------------------------------------------------------------
# 3. Attention weights
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_batch", [text_batch, video_batch], ids=["text", "video"])
def test_output_attentions_returns_the_probabilities_attention_used(make_batch):
    """Eager attention returns [B, H, S, T] per layer; the attention output is exactly those probabilities times the
    values expanded from the cached latent (the prefill and a decode step over the cache)."""
    model = multimodal_model(0)
    model.set_attn_implementation("eager")
    layer = model.model.language_model.layers[1].self_attn
    seen = []
    hook = layer.o_proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    batch = make_batch()
    try:
        with torch.no_grad():
            first = model(**batch, use_cache=True, output_attentions=True)
            cache = first[CACHE_NAME]
            mask = torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
            step = model(input_ids=torch.tensor([[7], [8]]), attention_mask=mask, cache=cache, use_cache=True,
                         output_attentions=True)  # fmt: skip
    finally:
        hook.remove()
    B, S = batch["input_ids"].shape
    H, d_n, d_v = layer.num_heads, layer.qk_nope_head_dim, layer.v_head_dim
    assert len(first.attentions) == len(step.attentions) == model.config.text_config.num_hidden_layers
    assert first.attentions[1].shape == (B, H, S, S) and step.attentions[1].shape == (B, H, 1, S + 1)
    latent = cache.layers[1].keys[:, 0]  # [B, T, r]
    values = (latent @ layer.kv_b_proj.weight.T).view(B, S + 1, H, d_n + d_v)[..., d_n:]  # [B, T, H, d_v]
    for probs, used, keys in ((first.attentions[1], seen[0], S), (step.attentions[1], seen[1], S + 1)):
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        expected = torch.einsum("bhqk,bkhd->bqhd", probs, values[:, :keys]).reshape(used.shape)
        torch.testing.assert_close(used, expected, rtol=1e-5, atol=1e-5)
    later = torch.ones(S, S).triu(1).bool()  # [query, key]: keys after the query
    for b in range(B):
        real = batch["attention_mask"][b].bool()
        probs = first.attentions[1][b][:, real]  # real queries only: padding queries attend anywhere, unused
        assert float(probs[:, later[real]].abs().max()) == 0.0, "causal: no weight on later tokens"
        assert float(probs[..., ~real].abs().sum()) == 0.0, "no weight on padding"


def test_generate_returns_attentions_and_sdpa_returns_none_as_transformers():
    """Under SDPA attention weights are not materialised: as transformers, a warning and no weights (the outputs and
    logits are those of the call without the flag); eager returns them, also from generate()."""
    model = multimodal_model(0)
    with torch.no_grad():
        plain = model(**text_batch())
        asked = model(**text_batch(), output_attentions=True)
    assert not asked.attentions  # transformers' own: () on 5.x, None on 4.57
    assert torch.equal(asked.logits, plain.logits)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model.generate(**text_batch(), max_new_tokens=3, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)  # fmt: skip
    assert len(out.attentions) == 3 and all(a is not None for step in out.attentions for a in step)
    assert out.attentions[-1][0].shape[-1] == out.sequences.shape[1] - 1


# ----------------------------------------------------------------------------------------------------------------------
# 4. Output flags follow the config
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_config_output_hidden_states_and_return_dict(head):
    model = HEADS[head](0)
    ids = dict(input_ids=torch.tensor([[5, 6, 7, 8]]))
    layers = model.config.get_text_config().num_hidden_layers
    with torch.no_grad():
        assert model(**ids).hidden_states is None
        model.config.output_hidden_states = True
        hidden = model(**ids).hidden_states
        assert hidden is not None and len(hidden) == layers + 1
        logits = model(**ids, use_cache=False).logits
        as_tuple = model(**ids, use_cache=False, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], logits)
        model.config.return_dict = False
        from_config = model(**ids, use_cache=False)
        assert isinstance(from_config, tuple) and torch.equal(from_config[0], logits)
        assert len(from_config[1]) == layers + 1  # hidden states, after logits


# ----------------------------------------------------------------------------------------------------------------------
# 6. Placeholders found from embeddings
# ----------------------------------------------------------------------------------------------------------------------


def test_inputs_embeds_with_video_equals_input_ids():
    model = multimodal_model(0)
    batch = video_batch()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    rest = {k: v for k, v in batch.items() if k != "input_ids"}
    with torch.no_grad():
        by_ids = model(**batch, use_cache=False).logits
        by_embeds = model(inputs_embeds=embeds, **rest, use_cache=False).logits
    torch.testing.assert_close(by_embeds, by_ids)
