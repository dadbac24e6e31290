"""The small checkpoint folder loads as users load it: Auto classes, trust_remote_code, a fresh process, a real video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DEMO_VIDEO, REPO_ROOT

LOAD_AND_GENERATE = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoProcessor
folder, video = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
messages = [{"role": "user", "content": [
    {"type": "video", "video": video, "fps": 2.0, "max_frames": 8},
    {"type": "text", "text": "What is happening in this video?"},
]}]
inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                       return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
cache = out.cache if hasattr(out, "cache") else out.past_key_values  # named `cache` since transformers 5.24
print(json.dumps({
    "model_module": type(model).__module__,
    "kernel_module": sys.modules[type(model).__module__].latent_attention_decode.__module__,
    "cache": type(cache).__name__,
    "bytes_per_token": cache.bytes_per_token(),
    "new_tokens": out.sequences.shape[1] - inputs["input_ids"].shape[1],
    "video_grid_thw": inputs["video_grid_thw"].tolist(),
    "video_tokens": int((inputs["input_ids"] == model.config.video_token_id).sum()),
    "text": processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0],
}))
"""


def run_python(python: str, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` with interpreter `python` in a fresh process whose cwd and sys.path exclude the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFORMERS_VERBOSITY")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([python, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def run_isolated(code: str, *args: str, cwd: Path) -> dict:
    """`run_python` with this interpreter; the JSON object the code printed last."""
    result = run_python(sys.executable, code, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_folder_has_flat_remote_code_and_auto_map(small_checkpoint):
    names = {p.name for p in small_checkpoint.iterdir()}
    assert {"configuration_internvideo3.py", "modeling_internvideo3.py", "processing_internvideo3.py",
            "latent_attention.py", "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(p.is_dir() for p in small_checkpoint.iterdir()), "remote code must be flat"
    config = json.loads((small_checkpoint / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_internvideo3.InternVideo3ForConditionalGeneration"
    assert config["model_type"] == "internvideo3"


def test_generate_on_real_video_in_fresh_process(small_checkpoint, tmp_path):
    result = run_isolated(LOAD_AND_GENERATE, str(small_checkpoint), str(DEMO_VIDEO), cwd=tmp_path)
    assert result["model_module"].startswith("transformers_modules"), "must load the folder's remote code"
    # the folder's own flat kernel, not the installed package's (the installed one would hide a missing file)
    assert result["kernel_module"].startswith("transformers_modules"), result["kernel_module"]
    assert REPO_ROOT.name not in result["model_module"]
    assert result["cache"] == "InternVideo3LatentCache"
    assert result["new_tokens"] == 4
    text = json.loads((small_checkpoint / "config.json").read_text())["text_config"]
    # fp32: (kv_lora_rank + qk_rope_head_dim) values x 4 bytes x layers per token
    assert result["bytes_per_token"] == (text["kv_lora_rank"] + text["qk_rope_head_dim"]) * 4 * text["num_hidden_layers"]
    (t, h, w), = result["video_grid_thw"]
    assert result["video_tokens"] == t * h * w // 4
