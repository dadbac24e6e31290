"""GQA/MHA -> M²LA converter (SPEC §9): exactness of the lossless stages, end-to-end exactness where the method is
lossless, biases, loading/generation of converted folders, atomic writes and clear errors.

Sources are built with transformers' own classes (Qwen2, Llama, Qwen3, Qwen3-VL) at tiny widths and saved with
`save_pretrained`, exactly as users' checkpoints are.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from transformers import AutoTokenizer

from internvideo3.convert.calibration import stdlib_docstrings, train_tokenizer
from internvideo3.convert.export import load_processor
from internvideo3.convert.gqa_to_m2la import (
    CalibrationBatch,
    ConversionError,
    ConvertOptions,
    TensorReader,
    _rotary,
    build_target_config,
    calibration_batches,
    check_source_keys,
    convert,
    load_m2la,
    load_source_attention,
    main,
    read_source_arch,
    source_mlp,
    split_cache_values,
    video_prompt_inputs,
)
from internvideo3.convert.m2la_math import (
    build_m2la_layer,
    interleave_permutation,
    key_plane_covariance,
    linearize_qk_norm,
    rorope_attention,
    rorope_basis,
    select_rope_components,
)
from modeling_internvideo3 import rms_norm
from tests.conftest import REPO_ROOT, TOKENIZER_DIR

TEXT_COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
                   max_position_embeddings=256, rms_norm_eps=1e-6)
FAST = dict(calibration_tokens=128, calibration_seq_len=64, progress=False, dtype="fp32")


def _bias_noise(model, std=0.5):
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                if proj.bias is not None:
                    proj.bias.normal_(0.0, std)


def make_source(kind: str, folder, kv_heads: int = 2, seed: int = 0):
    """Save a tiny random source checkpoint of `kind` (qwen2 | llama | qwen3 | qwen3_vl) into `folder`."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(TEXT_COMMON, num_key_value_heads=kv_heads, vocab_size=512, tie_word_embeddings=False)
    if kind == "qwen2":
        common.pop("head_dim")
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, rope_theta=10000.0))
        _bias_noise(model)
    elif kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, rope_theta=10000.0))
    elif kind == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, rope_theta=10000.0))
        with torch.no_grad():  # non-trivial norm weights, so folding them matters
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    elif kind == "qwen3_vl":
        text = dict(common, vocab_size=151936, rope_scaling=dict(rope_type="default", mrope_section=[2, 3, 3],
                                                                  mrope_interleaved=True), rope_theta=10000.0)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      deepstack_visual_indexes=[0, 1], num_position_embeddings=64)
        model = tf.Qwen3VLForConditionalGeneration(tf.Qwen3VLConfig(text_config=text, vision_config=vision))
    else:
        raise ValueError(kind)
    model.float().eval().save_pretrained(folder)
    # a real checkpoint ships its tokenizer: the Qwen3 one for Qwen3-VL, a trained BPE one fitting vocabulary 512
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)) if kind == "qwen3_vl" else small_tokenizer()
    tokenizer.save_pretrained(folder)
    return model


@functools.lru_cache(maxsize=1)
def small_tokenizer():
    """A byte-level BPE tokenizer of 512 tokens trained on standard-library documentation (fits the text sources)."""
    return train_tokenizer(list(stdlib_docstrings())[:8], 512)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """kind -> (folder, model) for GQA sources with 2 KV heads of 4 query heads."""
    root = tmp_path_factory.mktemp("sources")
    return {kind: (root / kind, make_source(kind, root / kind)) for kind in ("qwen2", "llama", "qwen3", "qwen3_vl")}


def text_batch(arch, reader, ids, position_ids) -> CalibrationBatch:
    """A calibration batch of token ids at the given (1-D or 3-D) positions."""
    cos, sin = _rotary(arch)(position_ids)
    return CalibrationBatch(reader.get(arch.prefix + "embed_tokens.weight")[ids].float(), cos, sin)


def reference_logits(arch, reader, batch: CalibrationBatch, U_mode: str | None) -> torch.Tensor:
    """Logits of the source computed layer by layer from its safetensors with the converter's own streaming code and
    the attention of stages 1-2: U_mode None = plain GQA, "identity" = MLA rewrite, "pca" = MLA rewrite + RoRoPE
    with the basis calibrated on the batch itself."""
    check_source_keys(arch, reader)
    p = arch.prefix
    for i in range(arch.num_layers):
        lp = f"{p}layers.{i}."
        src = load_source_attention(arch, reader, i)
        x = rms_norm(batch.hidden, reader.get(lp + "input_layernorm.weight").float(), arch.rms_norm_eps)
        U = None
        if U_mode is not None:
            x_aug = torch.cat([x.reshape(-1, arch.hidden_size).double(), torch.ones(x[..., :1].numel(), 1,
                                                                                    dtype=torch.float64)], 1)
            sigma = x_aug.T @ x_aug / len(x_aug)
            lin = linearize_qk_norm(src, x_aug[:, :-1] if arch.qk_norm else None)
            U = rorope_basis(key_plane_covariance(lin.k, sigma, arch.num_kv_heads, arch.head_dim),
                             enabled=U_mode == "pca")
        attn = rorope_attention(src.to(torch.float32), x, batch.cos, batch.sin, U)
        post = reader.get(lp + "post_attention_layernorm.weight").float()
        batch.advance(attn, post, source_mlp(reader, lp), arch.rms_norm_eps, i)
    hidden = rms_norm(batch.hidden, reader.get(p + "norm.weight").float(), arch.rms_norm_eps)
    return hidden @ reader.get("lm_head.weight").float().T


def source_logits(model, ids, position_ids):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=position_ids, use_cache=False).logits.float()


def mrope_positions(B: int, S: int) -> torch.Tensor:
    """[3, B, S] positions whose T, H and W rows differ (as on video tokens), so mixing axes would show."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(S)[None].expand(B, S)
    return torch.stack([t, (t * 3) % 7 + torch.randint(0, 3, (B, S), generator=g), torch.randint(0, 9, (B, S), generator=g)])


def load_converted(folder):
    return load_m2la(folder, torch.float32)


# ----------------------------------------------------------------------------------------------------------------------
# (a) stages 1-2 are exact
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3", "qwen3_vl"])
def test_mla_rewrite_and_rorope_reproduce_source_logits(sources, kind):
    """GQA written as MLA (identity basis) and after RoRoPE (PCA basis per frequency plane, folded into the queries)
    give the source's fp32 logits within 1e-4; for Qwen3-VL on 3-D MRoPE positions whose axes differ."""
    folder, model = sources[kind]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, 24), generator=g)
    positions = mrope_positions(2, 24) if kind == "qwen3_vl" else torch.arange(24)[None].expand(2, 24)
    expected = source_logits(model, ids, positions)
    arch, reader = read_source_arch(folder), TensorReader(folder)
    plain = reference_logits(arch, reader, text_batch(arch, reader, ids, positions), None)
    assert (plain - expected).abs().max() < 1e-4  # the layer-by-layer reference is the source model
    for mode in ("identity", "pca"):
        got = reference_logits(arch, reader, text_batch(arch, reader, ids, positions), mode)
        assert (got - expected).abs().max() < 1e-4, mode


def test_video_calibration_and_rorope_reproduce_qwen3_vl_logits(sources, videos_dir):
    """On a real clip through the InternVideo3 processor, the converter's video calibration path (source vision tower,
    placeholder injection, 3-D MRoPE positions, DeepStack after layers 0 and 1) streamed layer by layer reproduces
    transformers' Qwen3-VL logits, plain and after the MLA rewrite + RoRoPE calibrated on the video's activations."""
    folder, model = sources["qwen3_vl"]
    arch, reader = read_source_arch(folder), TensorReader(folder)
    check_source_keys(arch, reader)
    config = build_target_config(arch, [24, 24], 16, 16, 16, True, torch.float32)
    options = ConvertOptions(calibration=[videos_dir / "snow_dog.mp4"], video_max_frames=4)
    inputs = video_prompt_inputs(load_processor(), videos_dir / "snow_dog.mp4", options.video_fps,
                                 options.video_max_frames)
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw")}
    if "mm_token_type_ids" in inspect.signature(model.model.forward).parameters:  # transformers >= 5.x needs it
        kwargs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.video_token_id).int() * 2
    with torch.no_grad():
        expected = model(**kwargs, use_cache=False).logits.float()[0]
    assert int(inputs["video_grid_thw"][0, 0]) >= 2  # several frame groups: H/W positions restart per group
    (batch,) = calibration_batches(arch, reader, config, folder, options)
    assert int(batch.visual_mask.sum()) == int((inputs["input_ids"] == 151656).sum())
    for mode in (None, "identity", "pca"):
        got = reference_logits(arch, reader, copy.deepcopy(batch), mode)[0]
        assert (got - expected).abs().max() < 1e-4, mode


def test_rorope_basis_is_orthogonal_and_orders_energy(sources):
    folder, _ = sources["llama"]
    arch, reader = read_source_arch(folder), TensorReader(folder)
    src = load_source_attention(arch, reader, 0)
    x = torch.randn(256, arch.hidden_size, dtype=torch.float64)
    x_aug = torch.cat([x, torch.ones(256, 1, dtype=torch.float64)], 1)
    sigma = x_aug.T @ x_aug / 256
    cov = key_plane_covariance(linearize_qk_norm(src, None).k, sigma, arch.num_kv_heads, arch.head_dim)
    U = rorope_basis(cov)
    eye = torch.eye(arch.num_kv_heads, dtype=torch.float64)
    assert torch.allclose(U @ U.transpose(1, 2), eye.expand_as(U), atol=1e-10)
    rotated = U @ cov @ U.transpose(1, 2)  # per plane: diagonal, decreasing
    energy = rotated.diagonal(dim1=1, dim2=2)
    assert (energy[:, 0] >= energy[:, 1] - 1e-9).all()
    assert (energy[:, 0] >= cov.diagonal(dim1=1, dim2=2).max(-1).values - 1e-9).all()


# ----------------------------------------------------------------------------------------------------------------------
# (b) lossless end to end where the method is lossless; (c) biases
# ----------------------------------------------------------------------------------------------------------------------


def assert_same_logits_and_greedy_tokens(source, converted) -> None:
    """fp32 logits of 2 random 20-token prompts within 1e-4 of the source's (no cache), and the same 8 greedy tokens
    after a 6-token prefix (through the converted model's latent cache)."""
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (converted(ids, use_cache=False).logits - source(ids).logits).abs().max() < 1e-4
        expected = source.generate(ids[:, :6], max_new_tokens=8, do_sample=False)
        assert torch.equal(expected, converted.generate(ids[:, :6], max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_one_kv_head_full_rank_is_exact_end_to_end(tmp_path, kind):
    """One KV head, rank = head_dim: the converted folder (loaded with trust_remote_code, sharded output) gives the
    source logits within 1e-4 and the same greedy generation."""
    model = make_source(kind, tmp_path / "src", kv_heads=1)
    report = convert(tmp_path / "src", tmp_path / "out", ConvertOptions(kv_lora_rank=16, max_shard_size=60_000, **FAST))
    assert all(s["kept_energy"] > 1 - 1e-9 for s in report["layers"])
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()  # several shards + index
    converted = load_converted(tmp_path / "out")
    assert_same_logits_and_greedy_tokens(model, converted)


def test_biases_carried_exactly(sources, tmp_path):
    """Qwen2 q/k/v biases -> q_proj / kv_a_proj_with_mqa biases. With 2 KV heads at full rank the conversion is exact
    except for the de-rotated key dims, so at equal positions (RoPE = identity) the logits match within 1e-4; the
    stored q_proj bias rows are the source's, times the softmax-scale fix, in the documented layout."""
    folder, model = sources["qwen2"]
    convert(folder, tmp_path / "out", ConvertOptions(kv_lora_rank=48, **FAST))  # (G-1)·d + G·d = 16 + 32
    converted = load_converted(tmp_path / "out")
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(4))
    zeros = torch.zeros_like(ids)
    with torch.no_grad():
        expected = model(ids, position_ids=zeros).logits
        got = converted(ids, position_ids=zeros, use_cache=False).logits
    assert (got - expected).abs().max() < 1e-4
    attn = converted.model.layers[0].self_attn
    src_bias = model.model.layers[0].self_attn.q_proj.bias.detach().view(4, 16)
    scale = ((16 + 16) / 16) ** 0.5
    stored = attn.q_proj.bias.detach().view(4, 32)
    torch.testing.assert_close(stored[:, :16], src_bias * scale, rtol=1e-6, atol=1e-6)  # q_nope = source q
    assert attn.kv_a_proj_with_mqa.bias is not None and attn.kv_a_proj_with_mqa.bias.abs().sum() > 0


def test_pair_interleaved_rope_rows():
    """Stored rows (2j, 2j+1) are the plane of frequency j: the permutation inverts `deinterleave_rope_channels`."""
    import modeling_internvideo3 as modeling

    x = torch.arange(16.0)
    stored = x[interleave_permutation(16)]
    assert stored[:4].tolist() == [0.0, 8.0, 1.0, 9.0]
    assert torch.equal(modeling.deinterleave_rope_channels(stored), x)


# ----------------------------------------------------------------------------------------------------------------------
# Lossy conversions: load, generate, measured errors
# ----------------------------------------------------------------------------------------------------------------------


def test_qwen3_vl_converts_to_full_model_and_runs_the_main_job(sources, tmp_path, videos_dir):
    """Qwen3-VL calibrated on text + a real clip -> full InternVideo3 layout: vision tensors copied bit-exactly, no
    GQA tensors left, M²LA config with auto_map, flat remote code; then `examples/generate_video.py --model <out>`
    (AutoModelForCausalLM + AutoProcessor with trust_remote_code) answers about a real video in a subprocess."""
    folder, _ = sources["qwen3_vl"]
    calibration = [videos_dir / "snow_dog.mp4", REPO_ROOT / "README.md"]
    options = ConvertOptions(kv_lora_rank=24, calibration=calibration, video_max_frames=4, **FAST)
    report = convert(folder, tmp_path / "out", options)
    assert report["calibration_visual_tokens"] > 0 and all(s["attn_out_rel_error"] < 1.0 for s in report["layers"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "internvideo3"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_internvideo3.InternVideo3ForConditionalGeneration"
    text = config["text_config"]
    assert (text["kv_lora_rank"], text["qk_rope_head_dim"], text["rope_interleave"]) == (24, 16, True)
    assert text["mrope_section"] == [2, 3, 3] and text["source_num_key_value_heads"] == 2
    assert {"modeling_internvideo3.py", "latent_attention.py", "processing_internvideo3.py"} <= {
        f.name for f in (tmp_path / "out").iterdir()}
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as out, \
            safe_open(str(folder / "model.safetensors"), "pt") as src:
        visual = [k for k in src.keys() if k.startswith("model.visual.")]
        assert visual and all(torch.equal(out.get_tensor(k), src.get_tensor(k)) for k in visual)
        assert not any(k.endswith(("k_proj.weight", "k_norm.weight")) for k in out.keys())
        assert text["q_norm"] and any(k.endswith("self_attn.q_norm.weight") for k in out.keys())  # kept exact
    result = subprocess.run(
        [sys.executable, "examples/generate_video.py", "--model", str(tmp_path / "out"), "--max-new-tokens", "4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answer:" in result.stdout and "generated 4 tokens" in result.stdout
    assert "M²LA latent 24 + rope key 16, 2 layers" in result.stdout


def test_qk_norm_treatments_are_measured(sources):
    """Qwen3 QK-norm cannot be folded exactly: the per-head least-squares fit has a smaller error than the mean-scale
    fold and than dropping the normalization (TransMLA's naive treatment)."""
    folder, _ = sources["qwen3"]
    arch, reader = read_source_arch(folder), TensorReader(folder)
    src = load_source_attention(arch, reader, 0)
    x = torch.randn(512, arch.hidden_size, dtype=torch.float64) * 3 + 1
    errors = {t: linearize_qk_norm(src, x, t).fit_error for t in ("lstsq", "scale", "none")}
    for part in ("q", "k"):
        assert 0 < errors["lstsq"][part] < errors["scale"][part] <= errors["none"][part] + 1e-12


def _orthogonal_key_qwen3(folder):
    """A Qwen3 source whose k_norm is linear: hidden = head_dim, every KV head's k_proj a scaled orthogonal matrix and
    unit input norms, so rms(k) = 0.7 · rms(x) = 0.7 for every token. q_norm stays nonlinear (random q_proj)."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Qwen3Config(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=256,
                            rms_norm_eps=1e-9, rope_theta=10000.0, tie_word_embeddings=False)
    model = tf.Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_()
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.copy_(torch.cat([torch.linalg.qr(torch.randn(16, 16))[0] * 0.7
                                                           for _ in range(2)]))
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    model.float().eval().save_pretrained(folder)
    small_tokenizer().save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_full_rope_width_and_exact_q_norm_are_exact_end_to_end(tmp_path, kind):
    """Every key component rotated (d_r = G·d = 32) at full rank: the conversion is exact for GQA (2 KV heads) through
    from_pretrained(trust_remote_code=True), with per-layer RoPE planes; for Qwen3, `--q-norm exact` keeps q_norm as a
    module and is exact (k_norm is linear on this source), while fitting q_norm is not."""
    model = (_orthogonal_key_qwen3 if kind == "qwen3" else lambda f: make_source("llama", f))(tmp_path / "src")
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits
    errors = {}
    for mode in ("exact", "fit") if kind == "qwen3" else ("exact",):
        out = tmp_path / mode
        convert(tmp_path / "src", out, ConvertOptions(kv_lora_rank=32, rope_dim=32, q_norm=mode, **FAST))
        converted = load_converted(out)
        config = json.loads((out / "config.json").read_text())
        assert config["qk_rope_head_dim"] == 32 and len(config["rope_frequency_planes"][0]) == 16
        assert config["q_norm"] is (kind == "qwen3" and mode == "exact")
        assert (converted.model.layers[0].self_attn.q_norm is not None) is config["q_norm"]
        with torch.no_grad():
            errors[mode] = float((converted(ids, use_cache=False).logits - expected).abs().max())
            if mode == "exact":
                gen_src = model.generate(ids[:, :6], max_new_tokens=8, do_sample=False)
                assert torch.equal(gen_src, converted.generate(ids[:, :6], max_new_tokens=8, do_sample=False))
    assert errors["exact"] < 1e-4
    if kind == "qwen3":
        assert errors["fit"] > 100 * errors["exact"]


def test_cache_values_and_rope_selection(sources, tmp_path):
    """--cache-values N is split into r + d_r by the measured rule; a narrow RoPE key keeps the components the rule
    ranks first (uniform at d_r = d: rotated head 0 of every plane, the original layout, no planes in the config)."""
    folder, _ = sources["llama"]
    report = main(["--src", str(folder), "--out", str(tmp_path / "a"), "--cache-values", "32", "--dtype", "fp32",
                   "--calibration-tokens", "128", "--calibration-seq-len", "64"])
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"]) == split_cache_values(32, 2, 16) == (8, 24)
    assert report["layers"][0]["rope_dim"] == 24 and load_converted(tmp_path / "a") is not None
    arch, reader = read_source_arch(folder), TensorReader(folder)
    src = load_source_attention(arch, reader, 0)
    x_aug = torch.cat([torch.randn(256, 64, dtype=torch.float64), torch.ones(256, 1, dtype=torch.float64)], 1)
    sigma = x_aug.T @ x_aug / 256
    lin = linearize_qk_norm(src, None)
    cov = key_plane_covariance(lin.k, sigma, 2, 16)
    U = rorope_basis(cov)
    assert select_rope_components(U, cov, 16, "uniform") == [(0, j) for j in range(8)]
    energy = (U @ cov @ U.transpose(1, 2)).diagonal(dim1=1, dim2=2)
    picked = select_rope_components(U, cov, 8, "key")
    assert sorted(float(energy[j, g]) for g, j in picked) == sorted(energy.flatten().tolist())[-4:]
    qk = select_rope_components(U, cov, 8, "qk", lin.q.view(4, 16, -1), sigma, src.group_of_head)
    assert len(set(qk)) == 4
    convert(folder, tmp_path / "b", ConvertOptions(kv_lora_rank=16, rope_selection="uniform", **FAST))
    assert "rope_frequency_planes" not in json.loads((tmp_path / "b" / "config.json").read_text()) or json.loads(
        (tmp_path / "b" / "config.json").read_text())["rope_frequency_planes"] is None


def test_new_config_fields_default_to_the_released_layout():
    """q_norm and rope_frequency_planes default to the released model's behaviour; bad plane lists are rejected."""
    from configuration_internvideo3 import InternVideo3TextConfig

    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
                 kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, mrope_section=[8, 0, 0])
    config = InternVideo3TextConfig(**small)
    assert config.q_norm is False and config.rope_frequency_planes is None
    with pytest.raises(ValueError, match="rope_frequency_planes needs 2 lists"):
        InternVideo3TextConfig(**small, rope_frequency_planes=[list(range(8))])
    with pytest.raises(ValueError, match="wrong at layers \\[1\\]"):
        InternVideo3TextConfig(**small, rope_frequency_planes=[list(range(8)), [0] * 7 + [8]])
    with pytest.raises(ValueError, match="q_norm needs qk_nope_head_dim >= head_dim"):
        InternVideo3TextConfig(**dict(small, qk_nope_head_dim=8), q_norm=True)


def test_rank_error_and_energy_are_monotone(sources):
    folder, _ = sources["llama"]
    arch, reader = read_source_arch(folder), TensorReader(folder)
    src = load_source_attention(arch, reader, 0)
    x_aug = torch.cat([torch.randn(256, arch.hidden_size, dtype=torch.float64), torch.ones(256, 1, dtype=torch.float64)], 1)
    sigma = x_aug.T @ x_aug / 256
    lin = linearize_qk_norm(src, None)
    U = rorope_basis(key_plane_covariance(lin.k, sigma, 2, 16))
    stats = [build_m2la_layer(src, lin, sigma, U, r, 16, 16, 16).stats for r in (8, 24, 48)]
    assert stats[0]["kept_energy"] < stats[1]["kept_energy"] < stats[2]["kept_energy"] == pytest.approx(1.0)
    assert stats[2]["v_rel_error"] < 1e-10 and stats[2]["k_nope_rel_error"] < 1e-10


# ----------------------------------------------------------------------------------------------------------------------
# Streaming output: atomic folders, re-runs, errors
# ----------------------------------------------------------------------------------------------------------------------


def test_interrupted_run_leaves_nothing_loadable_and_rerun_restarts(sources, tmp_path, capsys):
    folder, _ = sources["llama"]
    out = tmp_path / "out"

    def crash(i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(folder, out, ConvertOptions(kv_lora_rank=16, **FAST), layer_hook=crash)
    assert not out.exists() and not list(tmp_path.glob(".out.incomplete-*"))
    assert "nothing was written" in capsys.readouterr().err
    # A hard kill leaves the hidden temporary folder (no config.json, an INCOMPLETE note): the next run removes it.
    stale = tmp_path / ".out.incomplete-killed"
    stale.mkdir()
    (stale / "INCOMPLETE").write_text("interrupted")
    convert(folder, out, ConvertOptions(kv_lora_rank=16, **FAST))
    assert not stale.exists() and (out / "config.json").is_file() and not (out / "INCOMPLETE").exists()
    assert "interrupted run" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        convert(folder, out, ConvertOptions(kv_lora_rank=16, **FAST))
    convert(folder, out, ConvertOptions(kv_lora_rank=8, overwrite=True, **FAST))
    assert json.loads((out / "config.json").read_text())["kv_lora_rank"] == 8


def test_per_layer_ranks(sources, tmp_path):
    folder, _ = sources["llama"]
    convert(folder, tmp_path / "out", ConvertOptions(kv_lora_rank_list=[8, 24], **FAST))
    model = load_converted(tmp_path / "out")
    assert [layer.self_attn.kv_lora_rank for layer in model.model.layers] == [8, 24]
    assert model.config.kv_lora_rank_list == [8, 24]


def test_cli_clear_errors(sources, tmp_path, capsys, videos_dir):
    """Every user error exits with status 2 and a message naming the cause, before anything is written."""
    folder, _ = sources["llama"]

    def error_of(*argv):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--calibration-tokens", "64", "--calibration-seq-len", "32"])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "larger than possible" in error_of("--src", str(folder), "--out", str(tmp_path / "o"), "--kv-lora-rank", "49")
    assert "--rope-dim" in error_of("--src", str(folder), "--out", str(tmp_path / "o"), "--kv-lora-rank", "16",
                                  "--rope-dim", "7")
    assert "--cache-values 65 must be in 33..64" in error_of("--src", str(folder), "--out", str(tmp_path / "o"),
                                                             "--cache-values", "65")
    assert "not found" in error_of("--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    (tmp_path / "moe").mkdir()
    (tmp_path / "moe" / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    assert "unsupported architecture" in error_of("--src", str(tmp_path / "moe"), "--out", str(tmp_path / "o"))
    (tmp_path / "nofiles").mkdir()
    (tmp_path / "nofiles" / "config.json").write_text((folder / "config.json").read_text())
    assert "no safetensors" in error_of("--src", str(tmp_path / "nofiles"), "--out", str(tmp_path / "o"))
    assert "calibration file not found" in error_of("--src", str(folder), "--out", str(tmp_path / "o"),
                                                    "--kv-lora-rank", "16", "--calibration", str(tmp_path / "x.txt"))
    assert "need a Qwen3-VL source" in error_of("--src", str(folder), "--out", str(tmp_path / "o"), "--kv-lora-rank",
                                                "16", "--calibration", str(videos_dir / "snow_dog.mp4"))
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "nofiles" / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "missing: ['model-00001-of-00002.safetensors']" in error_of("--src", str(tmp_path / "nofiles"), "--out",
                                                                      str(tmp_path / "o"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "partial" / "model.safetensors"))
    assert "layer 1 lacks ['model.layers.1.mlp.up_proj.weight']" in error_of(
        "--src", str(tmp_path / "partial"), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    (tmp_path / "o").mkdir()
    assert "exists" in error_of("--src", str(folder), "--out", str(tmp_path / "o"), "--kv-lora-rank", "16")


def test_cli_module_runs_from_repository_root(sources, tmp_path):
    folder, _ = sources["qwen3"]
    result = subprocess.run(
        [sys.executable, "-m", "convert.gqa_to_m2la", "--src", str(folder), "--out", str(tmp_path / "out"),
         "--kv-lora-rank", "16", "--calibration", str(REPO_ROOT / "README.md"), "--calibration-tokens", "128",
         "--calibration-seq-len", "64", "--dtype", "bf16"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layer   1: rank 16/48" in result.stdout and "converting layers" in result.stderr  # tqdm per layer
    assert json.loads((tmp_path / "out" / "config.json").read_text())["attention_bias"] is True  # lstsq QK-norm fit
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.kv_b_proj.weight").dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------------
# Issue 27: the equal-cache exact form; energy per layer in the report
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_equal_cache_converts_exactly(tmp_path, kind, kv_heads):
    """At --cache-values = the GQA cache (2·G·head_dim) the converter picks the exact form (r = d_r = G·head_dim:
    every KV head's rotated key in the shared RoPE key, values in the latent; Qwen3's q_norm and k_norm kept as
    modules) and the converted folder gives the source's fp32 logits within 1e-4 (Qwen3: QK-norm with non-trivial
    weights, Qwen2: biases), and the same greedy tokens through the latent cache (absorbed decode)."""
    model = make_source(kind, tmp_path / "src", kv_heads=kv_heads)
    d = 16
    report = convert(tmp_path / "src", tmp_path / "out", ConvertOptions(cache_values=2 * kv_heads * d, **FAST))
    converted = load_converted(tmp_path / "out")
    assert_same_logits_and_greedy_tokens(model, converted)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"]) == (kv_heads * d, kv_heads * d)
    assert config["k_norm"] is (kind == "qwen3") and config["q_norm"] is (kind == "qwen3")
    assert converted.config.k_norm is (kind == "qwen3")
    form = report["exact_form"]
    assert form["chosen"] and 0 < form["extra_fraction"] <= form["bound"] == 0.25


def test_exact_form_is_priced_and_skipped_above_the_bound(sources, tmp_path):
    """The exact form's extra q_proj parameters are reported; over the bound (here: a source whose q_proj would grow
    by more than 25 % of its parameters: 8 KV heads) --cache-values keeps the measured split."""
    import transformers as tf

    torch.manual_seed(0)
    wide = tf.LlamaForCausalLM(tf.LlamaConfig(**dict(TEXT_COMMON, num_attention_heads=8, head_dim=16, hidden_size=128),
                                              num_key_value_heads=8, vocab_size=512, tie_word_embeddings=False))
    wide.float().save_pretrained(tmp_path / "src")
    small_tokenizer().save_pretrained(tmp_path / "src")
    report = convert(tmp_path / "src", tmp_path / "out", ConvertOptions(cache_values=256, **FAST))
    form = report["exact_form"]
    assert form["extra_query_params"] == 2 * 8 * 8 * 16 * 128 and form["extra_fraction"] > 0.25
    assert not form["chosen"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["qk_rope_head_dim"] == 32  # 2·d, the rule


def test_report_states_kept_key_and_value_energy(sources, tmp_path):
    """conversion_report.json states per layer the share of the keys' energy kept rotated in the RoPE key and in
    the latent, and of the values' energy kept in the latent: 1 where the conversion is lossless, below 1 and
    growing with the rank otherwise."""
    folder, _ = sources["qwen3"]
    kept = {}
    for rank, d_r in ((4, 8), (24, 8), (32, 32)):
        out = tmp_path / f"r{rank}-{d_r}"
        convert(folder, out, ConvertOptions(kv_lora_rank=rank, rope_dim=d_r, **FAST))
        layers = json.loads((out / "conversion_report.json").read_text())["layers"]
        for s in layers:
            assert s["key_energy_kept"] == pytest.approx(s["key_energy_in_rope"] + s["key_energy_in_latent"])
            assert 0 <= s["key_energy_kept"] <= 1 + 1e-9 and 0 <= s["value_energy_kept"] <= 1 + 1e-9
        kept[rank, d_r] = [(s["key_energy_kept"], s["value_energy_kept"]) for s in layers]
    for (k4, v4), (k24, v24), (k32, v32) in zip(kept[4, 8], kept[24, 8], kept[32, 32]):
        assert k4 < k24 < 1 - 1e-6 and v4 < v24 < 1
        assert k32 == pytest.approx(1.0) and v32 == pytest.approx(1.0)


def test_byte_level_source_is_a_complete_checkpoint(tmp_path):
    """The second bench family's tokenizer (`byte_tokenizer`: ids are the UTF-8 bytes, 256 = EOS, no merges) saved
    with a Qwen3 source of vocabulary 257 travels into the converted folder, which encodes the language reference
    (`python_reference_topics`) to its bytes and gives the source's logits at the GQA cache size."""
    import transformers as tf

    from internvideo3.convert.calibration import byte_tokenizer, python_reference_topics

    tokenizer = byte_tokenizer()
    text = python_reference_topics()[0][:300] + " é€"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")) and len(tokenizer) == 257 and tokenizer.eos_token_id == 256
    torch.manual_seed(0)
    model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**dict(TEXT_COMMON, num_key_value_heads=2), vocab_size=257,
                                               tie_word_embeddings=False, rope_theta=10000.0)).eval()
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "out", ConvertOptions(cache_values=64, **FAST))  # calibrated with its bytes
    converted_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert converted_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert converted_tokenizer.decode(ids) == text
    batch = torch.tensor([ids[:40]])
    with torch.no_grad():
        assert (load_converted(tmp_path / "out")(batch).logits - model(batch).logits).abs().max() < 1e-4
