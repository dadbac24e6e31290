"""The vLLM plugin (internvideo3/vllm, issue 25) against our transformers model, fp32, small checkpoint.

Runs only in the venv of the `vllm-cpu` extra (`.ci/run`'s vLLM leg): vLLM pins its own torch and transformers.
One engine for the whole module (an engine start is 20-40 s on the 2-core CI machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import torch  # noqa: E402

NEW_TOKENS = 24
# Lengths 1, 4, 19, 40: with 24 new tokens each crosses a 16-token KV block (MLA forces block_size 16 on CPU).
PROMPTS = [[9707], [9707, 11, 1879, 0], list(range(1000, 1019)), list(range(3000, 3040))]


@pytest.fixture(scope="module")
def engine(small_checkpoint):
    from vllm import LLM

    llm = LLM(model=str(small_checkpoint), trust_remote_code=True, dtype="float32", max_model_len=512,
              enforce_eager=True, max_num_seqs=4)
    yield llm
    del llm


@pytest.fixture(scope="module")
def reference(small_checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(small_checkpoint, trust_remote_code=True, dtype=torch.float32).eval()


def reference_greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    """Our transformers model's greedy tokens and their log-probabilities."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
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


def test_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "internvideo3"]
    assert plugin.value == "internvideo3.vllm:register"


def engine_kv_tokens(folder: Path, trust_remote_code: bool) -> int:
    """The KV capacity in tokens from the engine's own startup line (not from our formula)."""
    args = [sys.executable, str(Path(__file__).with_name("vllm_kv_capacity.py")), str(folder)]
    run = subprocess.run(args + (["trust"] if trust_remote_code else []), capture_output=True, text=True, timeout=300)
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
