"""Loading the published checkpoint layout (issue 4; SPEC §3, §8).

The released `config.json` may disagree with the weights (SPEC §3 "verify"): `attention_bias: false` while bias
tensors exist, `qk_latent_layernorm: true` without norm weights, a `kv_lora_rank_list` that does not match the
per-layer widths. The weights decide; every tensor loads, none is reported missing or unexpected, and the logits equal
those of a clean config. Keys that do not fit the M²LA layout fail loudly, naming the keys.

Checkpoints are written by `internvideo3.convert.export.save_model_folder` from `.small_checkpoint.small_model` with a
512-token vocabulary (these tests never tokenize) and per-layer latent ranks, so each folder is a few hundred KB.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvideo3.convert.export import save_model_folder
from internvideo3.convert.small_checkpoint import small_model
from modeling_internvideo3 import InternVideo3ForConditionalGeneration

VOCAB = 512
RANKS = [32, 24, 32, 16]  # per-layer latent widths r_l of the 4 small layers
ATTENTION = "model.language_model.layers.{}.self_attn."


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """(folder written with a truthful config.json, logits of the in-memory model that wrote it)."""
    model = small_model(seed=0, vocab_size=VOCAB, kv_lora_rank_list=RANKS)
    folder = save_model_folder(model, None, tmp_path_factory.mktemp("loading") / "clean")
    return folder, logits_of(model)


def text_batch() -> dict:
    """Two left-padded prompts of random token ids (attention, biases and ranks all act on text)."""
    input_ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**text_batch(), use_cache=False).logits


def stored_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def with_config(src: Path, out: Path, **text_changes) -> Path:
    """`src` with its weights linked and `text_config` fields changed (None deletes a field)."""
    out.mkdir()
    for path in src.iterdir():
        if path.name != "config.json":
            (out / path.name).symlink_to(path)
    config = json.loads((src / "config.json").read_text())
    for key, value in text_changes.items():
        if value is None:
            config["text_config"].pop(key, None)
        else:
            config["text_config"][key] = value
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def with_tensors(src: Path, out: Path, edit) -> Path:
    """`src` with its tensors rewritten by `edit(dict)` into one model.safetensors."""
    out.mkdir()
    tensors = stored_tensors(src)
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for path in src.iterdir():
        if not path.name.endswith(".safetensors"):
            (out / path.name).symlink_to(path)
    return out


def assert_loads_every_tensor(model, info: dict, folder: Path) -> None:
    assert {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v} == {}
    state, stored = model.state_dict(), stored_tensors(folder)
    assert set(state) == set(stored)
    different = [k for k in stored if not torch.equal(state[k], stored[k])]
    assert not different, f"tensors not loaded as stored: {different[:5]}"


# ----------------------------------------------------------------------------------------------------------------------
# The config traps of SPEC §3
# ----------------------------------------------------------------------------------------------------------------------

TRAPS = {
    "attention_bias_false": dict(attention_bias=False),
    "latent_norm_true": dict(qk_latent_layernorm=True),
    "stale_rank_list": dict(kv_lora_rank_list=[32, 32, 32, 32]),
    "no_rank_list": dict(kv_lora_rank_list=None, kv_lora_rank=896),
    "all_traps": dict(attention_bias=False, qk_latent_layernorm=True, kv_lora_rank=896, kv_lora_rank_list=[896] * 4),
}


@pytest.mark.parametrize("changes", TRAPS.values(), ids=TRAPS.keys())
def test_config_traps_load_every_tensor_with_clean_logits(clean, tmp_path, changes):
    folder, reference = clean
    trap = with_config(folder, tmp_path / "trap", **changes)
    model, info = InternVideo3ForConditionalGeneration.from_pretrained(trap, output_loading_info=True)
    assert_loads_every_tensor(model, info, folder)
    text = model.config.text_config
    assert text.attention_bias and not text.qk_latent_layernorm
    assert [text.layer_kv_lora_rank(i) for i in range(text.num_hidden_layers)] == RANKS
    assert torch.equal(logits_of(model.eval()), reference)


def test_clean_checkpoint_round_trips(clean):
    folder, reference = clean
    model, info = InternVideo3ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert_loads_every_tensor(model, info, folder)
    assert torch.equal(logits_of(model.eval()), reference)


def test_all_traps_through_auto_classes_and_remote_code(clean, tmp_path):
    """Users load with `AutoModelForCausalLM(..., trust_remote_code=True)`: the folder's own code adapts too."""
    from transformers import AutoModelForCausalLM

    folder, reference = clean
    trap = with_config(folder, tmp_path / "trap", **TRAPS["all_traps"])
    model = AutoModelForCausalLM.from_pretrained(trap, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")
    assert torch.equal(logits_of(model.eval()), reference)


# ----------------------------------------------------------------------------------------------------------------------
# Keys that do not fit the layout fail loudly, naming the keys
# ----------------------------------------------------------------------------------------------------------------------


def _add(key: str, shape: tuple[int, ...]):
    return lambda tensors: tensors.__setitem__(key, torch.ones(shape))


def _drop(key: str):
    return lambda tensors: tensors.pop(key)


def _gqa(tensors: dict) -> None:
    """A Qwen3-VL (GQA) attention layout instead of M²LA's: k_proj/v_proj, no latent projections."""
    for i in range(len(RANKS)):
        for key in [k for k in tensors if k.startswith(ATTENTION.format(i) + "kv_")]:
            tensors.pop(key)
        tensors[ATTENTION.format(i) + "k_proj.weight"] = torch.zeros(32, 64)
        tensors[ATTENTION.format(i) + "v_proj.weight"] = torch.zeros(32, 64)


BAD_KEYS = {
    "qwen3_q_norm_leftover": (
        lambda t: [_add(ATTENTION.format(i) + "q_norm.weight", (16,))(t) for i in range(len(RANKS))],
        ATTENTION.format(0) + "q_norm.weight",
    ),
    "gqa_checkpoint": (_gqa, "kv_a_proj_with_mqa.weight"),
    "kv_b_proj_missing_in_one_layer": (_drop(ATTENTION.format(2) + "kv_b_proj.weight"), "layers.2.self_attn.kv_b_proj"),
    "latent_norm_in_one_layer": (_add(ATTENTION.format(1) + "kv_a_layernorm.weight", (24,)), "layers.1.self_attn.kv_a_layernorm"),
    "bias_missing_in_layer_0": (_drop(ATTENTION.format(0) + "q_proj.bias"), "layers.0.self_attn.q_proj.bias"),
}  # fmt: skip


@pytest.mark.parametrize("edit, named", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_unknown_or_missing_keys_raise_naming_the_keys(clean, tmp_path, edit, named):
    folder, _ = clean
    bad = with_tensors(folder, tmp_path / "bad", edit)
    with pytest.raises(ValueError) as error:
        InternVideo3ForConditionalGeneration.from_pretrained(bad)
    assert re.search(re.escape(named), str(error.value)), f"the error must name {named!r}: {error.value}"


# ----------------------------------------------------------------------------------------------------------------------
# Keys outside the M²LA layout: transformers' handling (initialized, reported in loading_info), as for its own models
# ----------------------------------------------------------------------------------------------------------------------

NORM = "model.language_model.norm.weight"
LAYER_NORM = "model.language_model.layers.1.post_attention_layernorm.weight"
EMBED = "model.language_model.embed_tokens.weight"


def load_folder(folder: Path, **kwargs):
    """The card's loading call: the folder's own remote code through the Auto class, with the loading report."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True, **kwargs)
    assert type(model).__module__.startswith("transformers_modules")
    return model, info


def assert_other_tensors_as_stored(model, folder: Path, skip: set[str]) -> None:
    state = model.state_dict()
    different = [k for k, v in stored_tensors(folder).items() if k not in skip and not torch.equal(state[k], v)]
    assert not different, f"tensors not loaded as stored: {different[:5]}"


def test_missing_head_and_norm_weights_are_initialized_and_reported(small_checkpoint, tmp_path):
    """transformers initializes a missing `lm_head.weight` (normal, std `initializer_range`) and missing RMSNorm
    weights (ones), warns, and lists them in `missing_keys`; so does our loader."""
    dropped = {"lm_head.weight", NORM, LAYER_NORM}
    folder = with_tensors(small_checkpoint, tmp_path / "missing", lambda t: [t.pop(k) for k in dropped])
    model, info = load_folder(folder)
    assert set(info["missing_keys"]) == dropped
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    assert torch.equal(state[NORM], torch.ones_like(state[NORM]))
    assert torch.equal(state[LAYER_NORM], torch.ones_like(state[LAYER_NORM]))
    std = model.config.get_text_config().initializer_range
    assert abs(float(state["lm_head.weight"].std()) - std) < 0.1 * std
    assert_other_tensors_as_stored(model, small_checkpoint, dropped)


def test_unexpected_non_attention_key_is_reported(small_checkpoint, tmp_path):
    folder = with_tensors(small_checkpoint, tmp_path / "extra", _add("model.visual.extra.weight", (3,)))
    model, info = load_folder(folder)
    assert set(info["unexpected_keys"]) == {"model.visual.extra.weight"}
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert_other_tensors_as_stored(model, small_checkpoint, set())


def _narrow(key: str, rows: int | None = None, cols: int | None = None):
    def edit(tensors):
        tensors[key] = tensors[key][:rows, :cols].contiguous() if cols else tensors[key][:rows].contiguous()

    return edit


def test_mismatched_embedding_is_reinitialized_with_ignore_mismatched_sizes(small_checkpoint, tmp_path):
    folder = with_tensors(small_checkpoint, tmp_path / "narrow", _narrow(EMBED, cols=32))
    with pytest.raises(RuntimeError, match="mismatch"):  # transformers' own refusal without the flag
        load_folder(folder)
    model, info = load_folder(folder, ignore_mismatched_sizes=True)
    # transformers 5.x lists (key, checkpoint shape, model shape), 4.57 the key
    assert [entry if isinstance(entry, str) else entry[0] for entry in info["mismatched_keys"]] == [EMBED]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.state_dict()[EMBED].shape == stored_tensors(small_checkpoint)[EMBED].shape
    assert_other_tensors_as_stored(model, small_checkpoint, {EMBED})


def test_mismatched_q_proj_fails_even_with_ignore_mismatched_sizes(small_checkpoint, tmp_path):
    """q_proj's width is part of the M²LA layout (SPEC §3): re-initializing it would silently change the model."""
    def edit(tensors):
        for suffix in ("weight", "bias"):
            _narrow(ATTENTION.format(1) + f"q_proj.{suffix}", rows=64)(tensors)

    folder = with_tensors(small_checkpoint, tmp_path / "narrow_q", edit)
    with pytest.raises(ValueError, match=re.escape(ATTENTION.format(1) + "q_proj.weight")):
        load_folder(folder, ignore_mismatched_sizes=True)


# ----------------------------------------------------------------------------------------------------------------------
# Shards, device_map and dtype
# ----------------------------------------------------------------------------------------------------------------------


def test_sharded_checkpoint_with_index_loads(tmp_path, clean):
    folder, reference = clean
    model = small_model(seed=0, vocab_size=VOCAB, kv_lora_rank_list=RANKS)
    sharded = save_model_folder(model, None, tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3 and shards == {p.name for p in sharded.glob("*.safetensors")}
    loaded, info = InternVideo3ForConditionalGeneration.from_pretrained(sharded, output_loading_info=True)
    assert_loads_every_tensor(loaded, info, sharded)
    assert torch.equal(logits_of(loaded.eval()), reference)


def test_device_map_auto_and_dtype_auto(tmp_path):
    """The card's loading call: `dtype="auto"` keeps the stored bfloat16, `device_map="auto"` places every module
    (on the CPU here; transformers 4.57 records `hf_device_map`, 5.x only when it spans several devices); the logits
    equal those of the model that was saved."""
    model = small_model(seed=0, vocab_size=VOCAB, kv_lora_rank_list=RANKS).to(torch.bfloat16)
    folder = save_model_folder(model, None, tmp_path / "bf16", max_shard_size="200KB")
    loaded = InternVideo3ForConditionalGeneration.from_pretrained(folder, dtype="auto", device_map="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {p.device for p in loaded.parameters()} == {loaded.device}
    assert torch.equal(logits_of(loaded), logits_of(model))
