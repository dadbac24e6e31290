"""The vLLM plugin (internvideo3/vllm, issue 25) against our transformers model, fp32, small checkpoint.

Runs only in the venv of the `vllm-cpu` extra (`.ci/run`'s vLLM leg): vLLM pins its own torch and transformers.
One engine for the whole module (an engine start is 20-40 s on the 2-core CI machine). Videos and images are sent
as vLLM users send them (`video_url` / `image_url` parts, `file://` URLs) and decoded by the plugin's loader; the
reference is `processor.apply_chat_template` + `generate()` on the same files with the same settings.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import functools

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
# `LLM.apply_model` sends a function to the engine process (test_weight_update_in_place_...), by cloudpickle.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

import torch  # noqa: E402

NEW_TOKENS = 24
# A few frames at a small size: the whole prompt stays a few hundred tokens (2 frame groups of 16 tokens here).
VIDEO_SETTINGS = {"fps": 1.0, "max_frames": 4, "max_pixels": 128 * 32 * 32}
# Lengths 1, 4, 19, 40: with 24 new tokens each crosses a 16-token KV block (MLA forces block_size 16 on CPU).
PROMPTS = [[9707], [9707, 11, 1879, 0], list(range(1000, 1019)), list(range(3000, 3040))]


@pytest.fixture(scope="module")
def engine(small_checkpoint):
    from vllm import LLM

    llm = LLM(model=str(small_checkpoint), trust_remote_code=True, dtype="float32", max_model_len=2048,
              enforce_eager=True, max_num_seqs=4, allowed_local_media_path="/",
              media_io_kwargs={"video": VIDEO_SETTINGS})
    yield llm
    del llm


@pytest.fixture(scope="module")
def reference(small_checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(small_checkpoint, trust_remote_code=True, dtype=torch.float32).eval()


def reference_greedy(model, prompt) -> tuple[list[int], list[float]]:
    """Our transformers model's greedy tokens and their log-probabilities, for prompt ids or processor outputs."""
    inputs = {"input_ids": torch.tensor([prompt])} if isinstance(prompt, list) else dict(prompt)
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return tokens, [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, tokens)]


def vllm_greedy(engine, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=1, ignore_eos=True)
    outputs = engine.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    result = []
    for o in outputs:
        tokens = list(o.outputs[0].token_ids)
        result.append((tokens, [step[t].logprob for step, t in zip(o.outputs[0].logprobs, tokens)]))
    return result


def vllm_chat(engine, conversations: list[list[dict]]) -> list[tuple[list[int], list[float], list[int]]]:
    """(tokens, their log-probabilities, prompt ids) of greedy chat completions through `LLM.chat`."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=1, ignore_eos=True)
    outputs = engine.chat(conversations, params, use_tqdm=False)
    result = []
    for o in outputs:
        tokens = list(o.outputs[0].token_ids)
        logprobs = [step[t].logprob for step, t in zip(o.outputs[0].logprobs, tokens)]
        result.append((tokens, logprobs, list(o.prompt_token_ids)))
    return result


def chat(part: dict, text: str) -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def video_part(path: Path) -> dict:
    return {"type": "video_url", "video_url": {"url": path.resolve().as_uri()}}


def reference_chat(model, processor, item: dict, text: str, **settings):
    """Our processor's chat template on the same file (`item`: our message part), then `generate()`."""
    inputs = processor.apply_chat_template(chat(item, text), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt", **settings)
    return inputs["input_ids"][0].tolist(), reference_greedy(model, inputs)


@pytest.fixture(scope="module")
def processor(small_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(small_checkpoint, trust_remote_code=True)


def assert_same(got, expected):
    tokens, logprobs = got
    ref_tokens, ref_logprobs = expected
    assert tokens == ref_tokens
    assert max(abs(a - b) for a, b in zip(logprobs, ref_logprobs)) < 1e-4


def test_text_prompt_equals_transformers(engine, reference):
    (got,) = vllm_greedy(engine, [PROMPTS[2]])
    assert_same(got, reference_greedy(reference, PROMPTS[2]))


def test_batch_across_blocks_equals_transformers(engine, reference):
    """Four prompts of different lengths in one continuous batch, each crossing KV block boundaries."""
    for prompt, got in zip(PROMPTS, vllm_greedy(engine, PROMPTS)):
        assert_same(got, reference_greedy(reference, prompt))


def test_video_prompt_equals_transformers(engine, reference, processor, videos_dir):
    """A real clip as a `video_url`: the served prompt holds our processor's tokens (timestamps, frame groups), and
    tokens and log-probabilities equal our transformers model's on the same file and settings."""
    video = videos_dir / "pole_vault.mp4"
    ((tokens, logprobs, prompt),) = vllm_chat(engine, [chat(video_part(video), "Describe the clip.")])
    ref_prompt, expected = reference_chat(reference, processor, {"type": "video", "video": str(video)},
                                          "Describe the clip.", **VIDEO_SETTINGS)
    assert prompt == ref_prompt
    assert processor.video_token_id in prompt
    assert_same((tokens, logprobs), expected)


def test_video_input_reaches_the_model(engine, videos_dir):
    """The check above cannot pass on text alone: another clip under the same prompt text changes the scores."""
    (a, b) = vllm_chat(engine, [chat(video_part(videos_dir / "pole_vault.mp4"), "Describe."),
                                chat(video_part(videos_dir / "snow_dog.mp4"), "Describe.")])
    assert max(abs(x - y) for x, y in zip(a[1], b[1])) > 1e-3 or a[0] != b[0]


def test_two_requests_sharing_a_video_equal_transformers(engine, reference, processor, videos_dir):
    """One batch, two questions about the same clip (vLLM's processor cache serves the second): each equals ours."""
    video = videos_dir / "snow_dog.mp4"
    texts = ["What animal is this?", "Where is it?"]
    results = vllm_chat(engine, [chat(video_part(video), text) for text in texts])
    for text, (tokens, logprobs, prompt) in zip(texts, results):
        ref_prompt, expected = reference_chat(reference, processor, {"type": "video", "video": str(video)}, text,
                                              **VIDEO_SETTINGS)
        assert prompt == ref_prompt
        assert_same((tokens, logprobs), expected)


def test_image_prompt_equals_transformers(engine, reference, processor, videos_dir, tmp_path):
    """A real frame saved as PNG, sent as an `image_url`: prompt, tokens and log-probabilities equal ours."""
    import av
    from PIL import Image

    with av.open(str(videos_dir / "snow_dog.mp4")) as container:
        frame = next(container.decode(video=0)).to_image()
    path = tmp_path / "frame.png"
    frame.resize((frame.width // 4, frame.height // 4), Image.Resampling.BICUBIC).save(path)
    part = {"type": "image_url", "image_url": {"url": path.as_uri()}}
    ((tokens, logprobs, prompt),) = vllm_chat(engine, [chat(part, "What is in the picture?")])
    ref_prompt, expected = reference_chat(reference, processor, {"type": "image", "image": str(path)},
                                          "What is in the picture?")
    assert prompt == ref_prompt
    assert processor.image_token_id in prompt
    assert_same((tokens, logprobs), expected)


def _load_weights(weights: list[tuple[str, torch.Tensor]], model) -> None:
    """Runs inside the engine (`LLM.apply_model`): what TRL's colocate `sync_weights` does, one parameter per call."""
    for name, tensor in weights:
        model.load_weights([(name, tensor)])


def test_weight_update_in_place_reaches_prefill_and_decode(engine, reference):
    """TRL's colocate weight sync calls the running engine's `model.load_weights` per parameter. After every
    layer's `kv_b_proj` is replaced (scaled by 2), vLLM's greedy tokens and log-probabilities equal our transformers
    model with the same weights: the decode's absorbed W_UK / W_UV (derived once, after the
    first load; views of `kv_b_proj` in vLLM 0.32 when no dtype cast is needed) follow `kv_b_proj`, as the
    prefill's expansion does. Both models get their weights back afterwards."""
    names = [n for n, _ in reference.named_parameters() if n.endswith("kv_b_proj.weight")]
    assert names
    original = {n: p.detach().clone() for n, p in reference.named_parameters() if n in names}
    (before,) = vllm_greedy(engine, [PROMPTS[3]])
    try:
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name in names:
                    p.mul_(2.0)
        engine.apply_model(functools.partial(_load_weights, [(n, original[n] * 2.0) for n in names]))
        engine.reset_prefix_cache()
        (got,) = vllm_greedy(engine, [PROMPTS[3]])
        expected = reference_greedy(reference, PROMPTS[3])
    finally:
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name in names:
                    p.copy_(original[name])
        engine.apply_model(functools.partial(_load_weights, list(original.items())))
        engine.reset_prefix_cache()
    assert_same(got, expected)
    assert max(abs(a - b) for a, b in zip(got[1], before[1])) > 1e-2  # the update changed the scores
    assert_same(vllm_greedy(engine, [PROMPTS[3]])[0], reference_greedy(reference, PROMPTS[3]))  # restored


def _prefill_backends(model) -> list[str]:
    """Runs inside the engine (`LLM.apply_model`): the classes of the MLA layers' prefill backends."""
    return sorted({type(m.prefill_backend).__name__ for m in model.modules()
                   if getattr(m, "prefill_backend", None) is not None})


def test_cpu_prefill_is_the_fused_sdpa_backend(engine):
    """Every MLA layer of the engine prefills through the plugin's `FusedSDPAMLAPrefillBackend` (PyTorch's fused
    SDPA; the equality tests above pass through it), not vLLM's explicit-score `CPU_SDPA_MLA`."""
    assert engine.apply_model(_prefill_backends) == [["FusedSDPAMLAPrefillBackend"]]


@pytest.mark.parametrize("lengths", [[5, 37], [1, 16, 3]])
def test_fused_prefill_equals_vllms_explicit_attention(lengths):
    """The fused per-request causal attention equals vLLM's explicit fp32 scores + mask + softmax (its parent's
    `_ragged_sdpa`) on ragged requests, V narrower than Q/K as in MLA (d_v 32, d_n + d_r 48)."""
    from vllm.v1.attention.backends.mla.prefill.cpu_sdpa import CPUSDPAMLAPrefillBackend

    from internvideo3.vllm.cpu_mla import FusedSDPAMLAPrefillBackend

    widths = dict(num_heads=4, scale=48**-0.5, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16,
                  v_head_dim=32, vllm_config=None)
    g = torch.Generator().manual_seed(0)
    n = sum(lengths)
    q, k, v = torch.randn(n, 4, 48, generator=g), torch.randn(n, 4, 48, generator=g), torch.randn(n, 4, 32, generator=g)
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    args = (q, k, v, starts, starts, True, False)
    fused = FusedSDPAMLAPrefillBackend(**widths)._ragged_sdpa(*args)
    explicit = CPUSDPAMLAPrefillBackend(**widths)._ragged_sdpa(*args)
    assert fused.shape == explicit.shape == (n, 4, 32)
    assert (fused - explicit).abs().max().item() < 1e-5


def _engine_config(folder, monkeypatch, amx: bool, **engine_args):
    """vLLM's whole engine config for `folder` (no engine started), as on a CPU with AMX tiles or without."""
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    args = EngineArgs(model=str(folder), trust_remote_code=True, dtype="float32", max_model_len=2048, **engine_args)
    return args.create_engine_config()


@pytest.mark.parametrize("amx", [True, False])
def test_every_cpu_decodes_with_the_latent_backend(small_checkpoint, monkeypatch, amx):
    """On a CPU with AMX (Intel Xeon since Sapphire Rapids) vLLM picks its AMX_MLA backend by the host, whose
    kernels take 576-wide latents only: engines failed at load ("invalid weight input features 16"). Our
    architectures ask for CPU_MLA, whose class is the plugin's, with its block size 16, on every CPU."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

    config = _engine_config(small_checkpoint, monkeypatch, amx)
    assert config.attention_config.backend == AttentionBackendEnum.CPU_MLA
    assert config.cache_config.block_size == 16
    selector = AttentionSelectorConfig(head_size=48, dtype=torch.float32, kv_cache_dtype="auto", block_size=16,
                                       use_mla=True)
    path = current_platform.get_attn_backend_cls(config.attention_config.backend, selector)
    assert path == "internvideo3.vllm.cpu_mla.LatentCPUMLABackend"


def test_amx_backend_asked_for_by_name_is_refused_with_the_width(small_checkpoint, monkeypatch):
    with pytest.raises(ValueError, match=r"AMX_MLA takes kv_lora_rank \+ qk_rope_head_dim = 576 only; .* = 48"):
        _engine_config(small_checkpoint, monkeypatch, True, attention_backend="AMX_MLA")


def test_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "internvideo3"]
    assert plugin.value == "internvideo3.vllm:register"


def engine_kv_tokens(folder: Path, trust_remote_code: bool) -> int:
    """The KV capacity in tokens from the engine's own startup line (not from our formula)."""
    args = [sys.executable, str(Path(__file__).with_name("vllm_kv_capacity.py")), str(folder)]
    # INFO: the line is vLLM's INFO log, and importing TRL (tests/test_vllm_trl.py, collected in the same run) sets
    # VLLM_LOGGING_LEVEL=ERROR in os.environ.
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "INFO"}
    run = subprocess.run(args + (["trust"] if trust_remote_code else []), capture_output=True, text=True, timeout=300,
                         env=env)
    found = re.search(r"KV cache size: ([\d,]+) tokens", run.stdout + run.stderr)
    assert found, (run.stdout + run.stderr)[-3000:]
    return int(found.group(1).replace(",", ""))


def test_kv_capacity_is_the_latent(tmp_path):
    """At equal VLLM_CPU_KVCACHE_SPACE the engine holds 2 · n_kv · head_dim / (r + d_r) = 2 · 2 · 32 / (32 + 32) = 2x
    the tokens of vLLM's own Qwen3 decoder of the same width (SPEC §4: the cache is [c | k_pe]).

    vLLM's Qwen3-VL module does not import here (its processor module imports torchvision, which this index has
    only as a CUDA build), so the GQA reference is vLLM's Qwen3 text model with the same text widths; the KV cache
    of Qwen3-VL is its text decoder's."""
    from internvideo3.convert.export import load_processor, save_model_folder
    from internvideo3.convert.small_checkpoint import save_gqa_twin, small_model

    widths = dict(head_dim=32, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, kv_lora_rank=32,
                  mrope_section=[4, 6, 6])
    model = small_model(**widths)
    ours = save_model_folder(model, load_processor(), tmp_path / "ours")
    text = model.config.text_config
    save_gqa_twin(model, ours, tmp_path / "qwen3")

    ours_tokens = engine_kv_tokens(ours, trust_remote_code=True)
    gqa_tokens = engine_kv_tokens(tmp_path / "qwen3", trust_remote_code=False)
    ratio = 2 * text.source_num_key_value_heads * 32 / (32 + 32)
    print(f"KV capacity: ours {ours_tokens} tokens, Qwen3 {gqa_tokens} tokens, ratio {ours_tokens / gqa_tokens:.4f}")
    assert ratio == 2.0
    assert ours_tokens / gqa_tokens == pytest.approx(ratio, rel=1e-3)


def test_converted_text_model_equals_transformers(small_checkpoint, tmp_path):
    """`vllm serve` takes the folders `internvideo3-convert` writes (issue 25: "a converted model"): a Qwen3 GQA
    source (q_norm, k_norm, 2 KV heads) converted in the equal-cache exact form (`rope_dim` = `kv_lora_rank` = KV
    heads · head_dim) has architecture `InternVideo3TextForCausalLM`, a kept q_norm and k_norm, per-layer
    `rope_frequency_planes` and biases. Greedy tokens equal our transformers model's on the same folder and
    log-probabilities agree within 1e-4, for prompts of several lengths. (The converter's default form, q_norm and
    planes without k_norm, is served by the same code: the Qwen3-VL test below.) Before: the plugin had no text-only
    architecture, and refused `rope_frequency_planes`."""
    import json

    from transformers import AutoModelForCausalLM
    from vllm import LLM

    from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert
    from internvideo3.convert.small_checkpoint import save_gqa_twin, small_model

    model = small_model(seed=1)
    source = save_gqa_twin(model, small_checkpoint, tmp_path / "qwen3")
    width = model.config.text_config.source_num_key_value_heads * model.config.text_config.head_dim
    folder = tmp_path / "converted"
    convert(source, folder, ConvertOptions(kv_lora_rank=width, rope_dim=width, calibration_tokens=128,
                                           calibration_seq_len=64, progress=False, dtype="fp32"))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["InternVideo3TextForCausalLM"]
    assert config["q_norm"] is True and config["k_norm"] is True and config["rope_frequency_planes"] is not None
    reference = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    llm = LLM(model=str(folder), trust_remote_code=True, dtype="float32", max_model_len=256, enforce_eager=True,
              max_num_seqs=4)
    try:
        for prompt, got in zip(PROMPTS, vllm_greedy(llm, PROMPTS)):
            assert_same(got, reference_greedy(reference, prompt))
    finally:
        del llm


def test_converted_video_model_equals_transformers_on_a_video(tmp_path, videos_dir):
    """A converted Qwen3-VL GQA source (defaults: q_norm kept, per-layer `rope_frequency_planes` out of MRoPE
    sections [2, 3, 3]): a clip's `video_url` chat equals our transformers model on the same folder, prompt ids,
    tokens and log-probabilities. The video's 3-D positions reach each plane through the MRoPE axis of its source
    frequency, which text positions (equal rows) cannot check."""
    import json

    from transformers import AutoModelForCausalLM, AutoProcessor
    from vllm import LLM

    from internvideo3.convert.gqa_to_m2la import ConvertOptions, convert
    from tests.test_convert import make_source

    settings = {"fps": 1.0, "max_frames": 2, "max_pixels": 64 * 32 * 32}  # the source's 256 positions hold it
    make_source("qwen3_vl", tmp_path / "qwen3_vl")
    folder = tmp_path / "converted"
    convert(tmp_path / "qwen3_vl", folder, ConvertOptions(kv_lora_rank=32, calibration_tokens=128,
                                                          calibration_seq_len=64, progress=False, dtype="fp32"))
    text = json.loads((folder / "config.json").read_text())["text_config"]
    assert text["q_norm"] is True and text["rope_frequency_planes"] is not None
    assert any(planes != list(range(len(planes))) for planes in text["rope_frequency_planes"])
    reference = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    llm = LLM(model=str(folder), trust_remote_code=True, dtype="float32", max_model_len=256, enforce_eager=True,
              max_num_seqs=2, allowed_local_media_path="/", media_io_kwargs={"video": settings})
    try:
        video = videos_dir / "pole_vault.mp4"
        ((tokens, logprobs, prompt),) = vllm_chat(llm, [chat(video_part(video), "Describe the clip.")])
    finally:
        del llm
    ref_prompt, expected = reference_chat(reference, processor, {"type": "video", "video": str(video)},
                                          "Describe the clip.", **settings)
    assert prompt == ref_prompt and processor.video_token_id in prompt
    assert_same((tokens, logprobs), expected)
