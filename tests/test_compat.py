"""Every supported transformers release (issue 10; SPEC §8): the cache's name, no deprecation from our code, a user's
own cache through generate(), and folders written under one release loading under another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import DEMO_VIDEO, REPO_ROOT
from test_checkpoint import run_python
from transformers import AutoProcessor

import modeling_internvideo3 as modeling
from internvideo3.convert.small_checkpoint import small_model
from modeling_internvideo3 import CACHE_NAME, InternVideo3LatentCache

PROMPT = dict(input_ids=torch.tensor([[101, 102, 103, 104, 105]]), attention_mask=torch.ones(1, 5, dtype=torch.long))

# Exercises what our users do with the model through the Auto classes (load, processor, generate with the default
# and with their own cache, a forward with labels and a cache, reading the cache back) with every warning shown, then
# checks that transformers' own deprecation path would have been caught by this same capture.
USER_SESSION = r"""
import json, logging, sys, warnings
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoProcessor

warnings.simplefilter("always")
transformers.logging.set_verbosity_warning()
folder, video = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
modeling = sys.modules[type(model).__module__]
messages = [{"role": "user", "content": [
    {"type": "video", "video": video, "fps": 2.0, "max_frames": 4},
    {"type": "text", "text": "What is happening in this video?"},
]}]
inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                       return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
mine = modeling.InternVideo3LatentCache(model.config)
again = model.generate(**inputs, max_new_tokens=3, do_sample=False, cache=mine)
step = model(**inputs, labels=inputs["input_ids"], use_cache=True, output_hidden_states=True)
cache = step[modeling.CACHE_NAME]
model(input_ids=again[:, -1:], cache=cache, use_cache=True)
print("SELF-CHECK", file=sys.stderr, flush=True)
if modeling.CACHE_NAME == "cache":  # the old name is deprecated here: this line must be seen by the capture
    out.past_key_values
print(json.dumps({"same_tokens": bool((out.sequences == again).all()), "cache_len": int(cache.get_seq_length()),
                  "transformers": transformers.__version__}))
"""


def deprecations(text: str) -> list[str]:
    return [line for line in text.splitlines() if "deprecat" in line.lower()]


def test_cache_name_follows_the_installed_release():
    fields = transformers.modeling_outputs.CausalLMOutputWithPast.__dataclass_fields__
    assert CACHE_NAME in fields and CACHE_NAME in ("cache", "past_key_values")
    assert CACHE_NAME in modeling.InternVideo3CausalLMOutputWithPast.__dataclass_fields__
    assert "rope_deltas" in modeling.InternVideo3CausalLMOutputWithPast.__dataclass_fields__


def test_user_session_raises_no_transformers_deprecation(small_checkpoint, tmp_path):
    result = run_python(sys.executable, USER_SESSION, str(small_checkpoint), str(DEMO_VIDEO), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ours, self_check = result.stderr.split("SELF-CHECK", 1)
    assert not deprecations(ours), f"deprecation warnings from our code: {deprecations(ours)}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["same_tokens"], "generate() with the user's own cache must give the default cache's tokens"
    if CACHE_NAME == "cache":  # the capture sees transformers' deprecation when it happens
        assert deprecations(self_check), "the capture missed transformers' own deprecation warning"


def test_main_job_prints_no_deprecation(small_checkpoint, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "generate_video.py"), "--model", str(small_checkpoint),
         "--max-frames", "4", "--max-new-tokens", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "answer:" in result.stdout and "KV cache:" in result.stdout
    assert not deprecations(result.stdout + result.stderr), deprecations(result.stdout + result.stderr)


@pytest.fixture(scope="module")
def model():
    return small_model(seed=0).float().eval()


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_generate_returns_the_users_own_cache(model, keyword):
    """generate(**inputs, cache=...) works on every release; past_key_values=... too (deprecated by 5.24's generate)."""
    with torch.no_grad():
        reference = model.generate(**PROMPT, max_new_tokens=4, do_sample=False)
        cache = InternVideo3LatentCache(model.config)
        out = model.generate(**PROMPT, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                             **{keyword: cache})  # fmt: skip
    assert out[CACHE_NAME] is cache, "generate() must fill and return the cache the user passed"
    assert cache.get_seq_length() == reference.shape[1] - 1  # the last token is generated, never fed back
    assert torch.equal(out.sequences, reference)


def test_forward_takes_either_cache_name_but_not_both(model):
    with torch.no_grad():
        first = model(**PROMPT, cache=InternVideo3LatentCache(model.config), use_cache=True)
        second = model(**PROMPT, past_key_values=InternVideo3LatentCache(model.config), use_cache=True)
        torch.testing.assert_close(first.logits, second.logits)
        assert isinstance(first[CACHE_NAME], InternVideo3LatentCache) and first[CACHE_NAME].get_seq_length() == 5
        with pytest.raises(ValueError, match="not both"):
            model(**PROMPT, cache=first[CACHE_NAME], past_key_values=second[CACHE_NAME])


def other_transformers_python() -> tuple[str, str] | None:
    """(python, version) of a second environment with another transformers: $INTERNVIDEO3_OTHER_PYTHON, else the
    repository's `.venv` / `.venv-457` that .ci/run creates."""
    candidates = [os.environ.get("INTERNVIDEO3_OTHER_PYTHON")]
    candidates += [str(REPO_ROOT / venv / "bin" / "python") for venv in (".venv", ".venv-457")]
    for python in filter(None, candidates):
        if not Path(python).is_file():
            continue
        probe = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        version = probe.stdout.strip()
        if probe.returncode == 0 and version and version != transformers.__version__:
            return python, version
    return None


LOAD_ELSEWHERE = r"""
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoProcessor
folder, video = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "video", "video": video, "fps": 2.0, "max_frames": 4},
                                         {"type": "text", "text": "What is happening?"}]}]
inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                       return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
print(json.dumps({"transformers": transformers.__version__, "input_ids": inputs["input_ids"][0].tolist(),
                  "new_tokens": out.shape[1] - inputs["input_ids"].shape[1], "vocab": len(processor.tokenizer)}))
"""


def test_folder_written_here_loads_under_the_other_supported_transformers(small_checkpoint, tmp_path):
    """The small checkpoint, written by this environment's transformers, loads and generates under the other leg's
    (4.57.3 <-> newest), with the same prompt tokens as here."""
    other = other_transformers_python()
    if other is None:
        pytest.skip("no second environment with another transformers (.ci/run creates .venv and .venv-457)")
    python, version = other
    result = run_python(python, LOAD_ELSEWHERE, str(small_checkpoint), str(DEMO_VIDEO), cwd=tmp_path)
    assert result.returncode == 0, f"transformers {version} cannot load a folder written by " \
                                   f"{transformers.__version__}:\n{result.stderr[-4000:]}"
    there = json.loads(result.stdout.strip().splitlines()[-1])
    processor = AutoProcessor.from_pretrained(small_checkpoint, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "video", "video": str(DEMO_VIDEO), "fps": 2.0, "max_frames": 4},
                                             {"type": "text", "text": "What is happening?"}]}]  # fmt: skip
    here = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert there["transformers"] == version and there["new_tokens"] == 3
    assert there["input_ids"] == list(here["input_ids"][0]) and there["vocab"] == len(processor.tokenizer)


def test_tokenizer_config_is_readable_by_every_release(small_checkpoint):
    config = json.loads((small_checkpoint / "tokenizer_config.json").read_text())
    assert not isinstance(config.get("extra_special_tokens"), list), "4.57 reads extra_special_tokens as a dict"
    assert "<|video_pad|>" in config["additional_special_tokens"]
    assert not {"is_local", "local_files_only"} & set(config)
