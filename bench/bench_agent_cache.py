"""Agent turns with the latent cache reused (`LatentCacheChat`) vs a full re-prefill of the conversation every turn.

    internvideo3-small-checkpoint --out checkpoints/internvideo3-small   # once (or any checkpoint: --model)
    python bench/bench_agent_cache.py --video tests/data/videos/pole_vault.mp4 --turns 4

The conversation is the agent's (system prompt, tool schemas, a coarse view of the whole video, the question); each
turn appends the model's reply and a tool result, alternately a re-inspected clip (a new video item) and a text note.
The same messages are answered twice in the same run: by one chat that keeps its cache (reuse) and by a fresh chat per
turn (baseline: the whole conversation prefilled again). Prints per turn the prompt tokens, the tokens each prefilled,
the wall time of each and their ratio, then the totals and the cache bytes. Random small-checkpoint replies are
random text; the token counts and times are what the agent's turns cost.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from internvideo3.agent import ClipSettings, LatentCacheChat, ToolRegistry, VideoTools
from internvideo3.agent.loop import DEFAULT_SYSTEM_PROMPT

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO_ROOT / "checkpoints" / "internvideo3-small"))
    parser.add_argument("--video", default=str(REPO_ROOT / "tests" / "data" / "videos" / "pole_vault.mp4"))
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--coarse-frames", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"error: --model {args.model!r} has no config.json (internvideo3-small-checkpoint --out ...)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=getattr(torch, args.dtype))
    model = model.to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    reuse = LatentCacheChat(model, processor)
    coarse = ClipSettings(fps=1.0, max_frames=args.coarse_frames, max_pixels=64 * 32 * 32).item(args.video)
    duration = float(reuse.load_video(coarse)[1].duration)
    schemas = VideoTools(args.video, duration, reuse, coarse).register_all(ToolRegistry()).schemas()
    clip = ClipSettings(fps=2.0, max_frames=16, max_pixels=64 * 32 * 32)
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": [coarse, {"type": "text", "text": "What is the main activity? Cite timestamps."}]},
    ]

    print(f"model {args.model} ({args.dtype}, {device}), video {args.video} ({duration:.1f} s)")
    print("turn | prompt tokens | prefilled reuse / full | seconds reuse / full | time ratio")
    totals = {"reuse_tokens": 0, "full_tokens": 0, "reuse_s": 0.0, "full_s": 0.0}
    for turn in range(args.turns):
        mine = reuse.respond(messages, tools=schemas, max_new_tokens=args.max_new_tokens)
        # a fresh cache, the same decoded frames: the comparison is prefill, not video decoding
        base = reuse.fork().respond(messages, tools=schemas, max_new_tokens=args.max_new_tokens)
        assert base.prompt_tokens == mine.prompt_tokens
        totals["reuse_tokens"] += mine.prefilled_tokens
        totals["full_tokens"] += base.prefilled_tokens
        totals["reuse_s"] += mine.seconds
        totals["full_s"] += base.seconds
        print(
            f"{turn + 1:4d} | {mine.prompt_tokens:13,d} | {mine.prefilled_tokens:7,d} / {base.prefilled_tokens:<6,d} "
            f"| {mine.seconds:6.2f} / {base.seconds:<6.2f} | {mine.seconds / base.seconds:.3f}"
        )
        messages.append({"role": "assistant", "content": mine.text})
        start = min(duration - 1.0, 10.0 * (turn + 1))
        if turn % 2 == 0:
            item = clip.item(args.video, start, min(duration, start + 8.0))
            messages.append({"role": "tool", "content": [{"type": "text", "text": f"clip {start:.1f} s"}, item]})
        else:
            messages.append({"role": "tool", "content": f"note {turn} saved"})
    print(
        f"total prefilled tokens: reuse {totals['reuse_tokens']:,} vs full {totals['full_tokens']:,} "
        f"(ratio {totals['reuse_tokens'] / totals['full_tokens']:.3f}); prefill tokens saved: "
        f"{reuse.prefill_tokens_saved:,}"
    )
    print(
        f"total seconds: reuse {totals['reuse_s']:.2f} vs full {totals['full_s']:.2f} "
        f"(ratio {totals['reuse_s'] / totals['full_s']:.3f})"
    )
    print(
        f"cache bytes: {reuse.cache_bytes():,} ({reuse.cache_tokens():,} tokens, "
        f"{reuse.cache_bytes() / max(reuse.cache_tokens(), 1):,.0f} bytes/token)"
    )


if __name__ == "__main__":
    main()
