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
    "non_attention_key_missing": (_drop("model.language_model.layers.1.mlp.up_proj.weight"), "layers.1.mlp.up_proj"),
    "unknown_vision_key": (_add("model.visual.extra.weight", (3,)), "model.visual.extra.weight"),
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
