"""transformers conventions (issue 22, items 4, 5, 7): attention weights asked for under SDPA, RoPE scaling through
transformers' own init functions (oracle: transformers' Qwen3-VL text rotary of the same RoPE width), and the
generative classes' bases."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GenerationMixin, Qwen3VLTextConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.qwen3_vl import modeling_qwen3_vl

from configuration_internvideo3 import InternVideo3Config, InternVideo3TextConfig
from internvideo3.convert.small_checkpoint import SMALL_TEXT_CONFIG, small_model
from modeling_internvideo3 import (
    InternVideo3ForConditionalGeneration,
    InternVideo3TextForCausalLM,
    InternVideo3TextRotaryEmbedding,
)
from test_modeling import text_batch

# ----------------------------------------------------------------------------------------------------------------------
# Item 4: output_attentions under SDPA behaves as transformers' SDPA: one warning, no weights, no error
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_qwen3_vl_text(attn_implementation: str):
    config = Qwen3VLTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, vocab_size=128, rope_theta=10000.0, attn_implementation=attn_implementation,
        rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    )  # fmt: skip
    return modeling_qwen3_vl.Qwen3VLTextModel(config).eval()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = {}

    def emit(self, record):
        self.records[id(record)] = record  # a record seen by two of our handlers counts once


def _warnings_of(call) -> tuple[list[str], object]:
    """Run `call` with `warning_once`'s memory cleared; return the warnings logged (transformers' loggers, which do not
    propagate to the root, and every other) and its result."""
    logging.Logger.warning_once.cache_clear()  # transformers' warning_once is an lru_cache on the Logger class
    handler, loggers = _Records(), [logging.getLogger(), logging.getLogger("transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with torch.no_grad():
            result = call()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return [r.getMessage() for r in handler.records.values()], result


def _text_model() -> InternVideo3TextForCausalLM:
    torch.manual_seed(0)
    return InternVideo3TextForCausalLM(InternVideo3TextConfig(**SMALL_TEXT_CONFIG, vocab_size=512)).eval()


@pytest.mark.parametrize("head", ["text", "multimodal"])
def test_output_attentions_under_sdpa_warns_once_and_returns_what_transformers_returns(head):
    """Asked for under SDPA, attention weights give transformers' Qwen3-VL warning (same text, once) and its same
    empty `attentions` (installed release: () on 5.x, None on 4.57) instead of an error; the logits are unchanged."""
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    qwen = _tiny_qwen3_vl_text("sdpa")
    qwen_warnings, qwen_out = _warnings_of(lambda: qwen(input_ids=ids, output_attentions=True))
    qwen_warnings = [w for w in qwen_warnings if "sdpa" in w]
    assert len(qwen_warnings) == 1

    model = _text_model() if head == "text" else small_model(seed=0)
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    plain = model(input_ids=ids) if head == "text" else model(**text_batch())
    inputs = dict(input_ids=ids) if head == "text" else text_batch()
    ours_warnings, out = _warnings_of(lambda: (model(**inputs, output_attentions=True),
                                                       model(**inputs, output_attentions=True)))  # fmt: skip
    assert [w for w in ours_warnings if "sdpa" in w] == qwen_warnings  # two calls, one warning, the same words
    first, second = out
    assert first.attentions == qwen_out.attentions == second.attentions  # () or None, as the installed transformers
    torch.testing.assert_close(first.logits, plain.logits, rtol=0, atol=0)


def test_generate_with_output_attentions_under_sdpa_runs():
    model = small_model(seed=0)
    with torch.no_grad():
        out = model.generate(**text_batch(), max_new_tokens=3, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)  # fmt: skip
        greedy = model.generate(**text_batch(), max_new_tokens=3, do_sample=False)
    assert torch.equal(out.sequences, greedy)
    assert len(out.attentions) == 3 and all(not step for step in out.attentions)


def test_eager_still_returns_attentions_without_a_warning():
    model = _text_model()
    model.set_attn_implementation("eager")
    messages, out = _warnings_of(lambda: model(input_ids=torch.tensor([[3, 4, 5]]), output_attentions=True))
    assert not [m for m in messages if "sdpa" in m]
    cfg = model.config
    assert len(out.attentions) == cfg.num_hidden_layers
    assert out.attentions[0].shape == (1, cfg.num_attention_heads, 3, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Item 7: the generative classes list GenerationMixin in their own bases
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [InternVideo3ForConditionalGeneration, InternVideo3TextForCausalLM])
def test_generative_classes_inherit_generation_mixin_directly(cls):
    """transformers' `PreTrainedModel.can_generate()` (4.57 and 5.x) first looks for GenerationMixin in the class's own
    `__bases__`, as its models declare it (`class XForCausalLM(XPreTrainedModel, GenerationMixin)`)."""
    assert GenerationMixin in cls.__bases__
    assert cls.can_generate()


# ----------------------------------------------------------------------------------------------------------------------
# Item 5: RoPE scaling, oracle transformers' Qwen3-VL text rotary of the RoPE width
# ----------------------------------------------------------------------------------------------------------------------

ROPE_WIDTH = 16  # qk_rope_head_dim: the rotary's width, deliberately not head_dim (32)
MAX_POSITIONS = 256
SECTION = [2, 3, 3]
THETA = 10000.0

# Each type's parameters (transformers' validation: required keys); every type of the installed ROPE_INIT_FUNCTIONS
# must be listed here, so a type a new release adds fails until it is looked at.
ROPE_PARAMETERS = {
    "default": {},
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 4.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 16.0, "beta_slow": 2.0},
    "longrope": {"short_factor": [1.0 + 0.1 * i for i in range(ROPE_WIDTH // 2)],
                 "long_factor": [2.0 + 0.5 * i for i in range(ROPE_WIDTH // 2)],
                 "factor": 4.0, "original_max_position_embeddings": 64},  # fmt: skip
    "llama3": {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "proportional": {"factor": 2.0},
}
ROPE_TYPES = ["default", *ROPE_INIT_FUNCTIONS.keys() - {"default"}]


def rope_scaling(rope_type: str) -> dict:
    return {"rope_type": rope_type, **ROPE_PARAMETERS[rope_type], "mrope_section": SECTION, "mrope_interleaved": True}


def ours_config(rope_type: str, **overrides) -> InternVideo3TextConfig:
    fields = dict(SMALL_TEXT_CONFIG, head_dim=32, qk_nope_head_dim=32, qk_rope_head_dim=ROPE_WIDTH,
                  max_position_embeddings=MAX_POSITIONS, rope_theta=THETA, rope_scaling=rope_scaling(rope_type))
    fields.pop("mrope_section")
    return InternVideo3TextConfig(**{**fields, **overrides})


def qwen_rotary(rope_type: str):
    """transformers' Qwen3-VL text rotary for the same RoPE parameters at head_dim = our RoPE width."""
    config = Qwen3VLTextConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=ROPE_WIDTH,
        max_position_embeddings=MAX_POSITIONS, rope_theta=THETA, rope_scaling=rope_scaling(rope_type),
    )  # fmt: skip
    return modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding(config)


def mrope_positions(length: int, start: int = 0) -> torch.Tensor:
    """[3, 2, length] T/H/W positions that differ per axis (a video-like grid), the second row shifted."""
    t = torch.arange(start, start + length)
    grid = torch.stack([t, start + (t - start) % 7 * 3, start + (t - start) % 5 * 2])  # [3, S]
    return torch.stack([grid, grid + 11], dim=1)


def test_every_rope_type_of_transformers_is_covered():
    assert set(ROPE_INIT_FUNCTIONS) - {"default"} <= set(ROPE_PARAMETERS)


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_rope_scaling_equals_qwen3_vl_text_rotary(rope_type):
    """inv_freq and attention_scaling equal transformers' Qwen3-VL text rotary built for the same RoPE width; cos/sin
    of interleaved-MRoPE positions match it before, beyond (dynamic and longrope switch) and back within the
    original max_position_embeddings, through the model's own rotary and config."""
    ours = InternVideo3TextForCausalLM(ours_config(rope_type)).model.rotary_emb
    theirs = qwen_rotary(rope_type)
    assert ours.rope_type == theirs.rope_type == rope_type
    assert torch.equal(ours.inv_freq, theirs.inv_freq)
    assert ours.attention_scaling == theirs.attention_scaling
    x = torch.zeros(1, dtype=torch.float32)
    for positions in (mrope_positions(40), mrope_positions(60, start=900), mrope_positions(30)):
        cos, sin = ours(x, positions)
        ref_cos, ref_sin = theirs(x, positions)
        assert cos.dtype == torch.float32 and cos.shape == (2, positions.shape[-1], ROPE_WIDTH)
        torch.testing.assert_close(cos, ref_cos, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sin, ref_sin, rtol=1e-6, atol=1e-6)
        assert torch.equal(ours.inv_freq, theirs.inv_freq)
        assert ours.attention_scaling == theirs.attention_scaling
    if rope_type != "default":  # the scaling reaches the angles
        default = InternVideo3TextRotaryEmbedding(ours_config("default"))(x, mrope_positions(60, start=900))
        assert not torch.allclose(default[0], ours(x, mrope_positions(60, start=900))[0])


def reference_default_rope(dim, theta, section, positions, interleaved=True):
    """SPEC §5.1-5.2 written out (the rotary's formula before RoPE scaling): inv_freq theta^(-2j/dim) in fp32, slot j
    from H if j % 3 == 1 and j < 3·section[1], W if j % 3 == 2 and j < 3·section[2], else T; emb = cat(f, f)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = positions[..., None].float() * inv_freq  # [3, B, S, dim/2]
    j = torch.arange(dim // 2)
    axis = torch.zeros_like(j)
    if interleaved:
        axis[(j % 3 == 1) & (j < 3 * section[1])] = 1
        axis[(j % 3 == 2) & (j < 3 * section[2])] = 2
    else:
        axis[section[0] : section[0] + section[1]] = 1
        axis[section[0] + section[1] : sum(section)] = 2
    freqs = freqs.gather(0, axis.view(1, 1, 1, -1).expand(1, *freqs.shape[1:]))[0]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("case", ["8b", "small", "chunked", "frequency_planes"])
def test_default_rope_is_bit_identical_and_config_unchanged(case):
    """Existing checkpoints: a default config stores the same rope fields as before and gives bit-identical cos/sin
    (also after the model is cast to bfloat16: the frequencies stay fp32)."""
    if case == "8b":
        config = InternVideo3TextConfig()
    elif case == "small":
        config = InternVideo3TextConfig(**SMALL_TEXT_CONFIG)
    elif case == "chunked":
        config = InternVideo3TextConfig(**SMALL_TEXT_CONFIG | dict(mrope_interleaved=False))
    else:
        planes = [[(i * 3 + p) % 8 for p in range(8)] for i in range(SMALL_TEXT_CONFIG["num_hidden_layers"])]
        config = InternVideo3TextConfig(**SMALL_TEXT_CONFIG | dict(rope_frequency_planes=planes))
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": config.rope_theta,
                                      "mrope_section": config.mrope_section,
                                      "mrope_interleaved": config.mrope_interleaved}  # fmt: skip
    if case == "8b":
        assert config.rope_parameters == {"rope_type": "default", "rope_theta": 5_000_000.0,
                                          "mrope_section": [24, 20, 20], "mrope_interleaved": True}  # fmt: skip
    rotary = InternVideo3TextRotaryEmbedding(config)
    assert rotary.dim == (config.head_dim if case == "frequency_planes" else config.qk_rope_head_dim)
    positions = mrope_positions(300, start=5)
    expected = reference_default_rope(rotary.dim, config.rope_theta, config.mrope_section, positions,
                                      config.mrope_interleaved)  # fmt: skip
    x = torch.zeros(1, dtype=torch.bfloat16)
    for got in (rotary(x, positions), rotary.to(torch.bfloat16)(x, positions)):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert rotary.inv_freq.dtype == torch.float32
    flat = positions[0, :1]  # [1, S]: 1-D positions are the equal-rows case
    assert all(torch.equal(a, b[:1]) for a, b in zip(rotary(x, flat), reference_default_rope(
        rotary.dim, config.rope_theta, config.mrope_section, positions[0:1].expand(3, -1, -1)[:, :1])))  # fmt: skip


@pytest.mark.parametrize("spelling", ["rope_scaling", "rope_parameters"])
def test_rope_scaling_survives_save_and_load(tmp_path, spelling):
    """A YaRN-scaled model (either spelling) saves and loads: the same rope parameters, rotary buffers, attention
    scaling and logits after from_pretrained (whose meta-device loading refills the buffers on 5.x)."""
    scaling = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
    if spelling == "rope_scaling":
        model = small_model(seed=0, rope_scaling=scaling, rope_theta=THETA, max_position_embeddings=MAX_POSITIONS)
    else:
        model = small_model(seed=0, rope_parameters=dict(scaling, rope_theta=THETA),
                            max_position_embeddings=MAX_POSITIONS)  # fmt: skip
    text = model.config.text_config
    assert text.rope_parameters["rope_type"] == "yarn" and text.rope_parameters["factor"] == 4.0
    assert text.rope_parameters["rope_theta"] == THETA and text.mrope_section == SMALL_TEXT_CONFIG["mrope_section"]
    model.save_pretrained(tmp_path)
    config = InternVideo3Config.from_pretrained(tmp_path)
    assert config.text_config.rope_parameters == text.rope_parameters
    loaded = InternVideo3ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.text_config.rope_parameters == text.rope_parameters
    rotary, loaded_rotary = model.model.language_model.rotary_emb, loaded.model.language_model.rotary_emb
    assert rotary.attention_scaling == loaded_rotary.attention_scaling > 1.0
    assert torch.equal(rotary.inv_freq, loaded_rotary.inv_freq)
    assert torch.equal(rotary.original_inv_freq, loaded_rotary.original_inv_freq)
    with torch.no_grad():
        assert torch.equal(model(**text_batch()).logits, loaded(**text_batch()).logits)


def test_rope_type_errors():
    with pytest.raises(ValueError, match="not a RoPE type"):
        InternVideo3TextConfig(**SMALL_TEXT_CONFIG, rope_scaling={"rope_type": "no-such-rope"})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        InternVideo3TextConfig(**SMALL_TEXT_CONFIG, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                     "partial_rotary_factor": 0.5})  # fmt: skip
