"""`internvideo3-agent`: answer a question about a long video with the tool-calling agent (SPEC §12).

    internvideo3-agent --model DIR --video FILE --question TEXT --max-steps 8 --transcript run.json

Prints the transcript, then `answer: <text>`, `steps: <n>`, `prefill tokens saved: <n>` and `cache bytes: <n>`.
Bad input (missing files, bad numbers, an undecodable video) exits with status 2 and one `error: ...` line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser(model_required: bool = True, default_video: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvideo3-agent", description=__doc__.splitlines()[0])
    model_help = "checkpoint folder or Hub id" + ("" if model_required else " (default: the small local checkpoint)")
    parser.add_argument("--model", required=model_required, help=model_help)
    parser.add_argument("--video", required=default_video is None, default=default_video, help="video file")
    parser.add_argument("--question", required=default_video is None, default="What happens in this video?")
    parser.add_argument("--max-steps", type=int, default=8, help="model turns at most")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per turn at most")
    parser.add_argument("--max-context-tokens", type=int, default=65536, help="context length at most (tokens)")
    parser.add_argument("--transcript", help="write the transcript as JSON here (atomically)")
    parser.add_argument("--coarse-fps", type=float, default=1.0, help="overview frames per second of video")
    parser.add_argument("--coarse-frames", type=int, default=32, help="overview frames at most")
    parser.add_argument("--coarse-max-pixels", type=int, default=64 * 32 * 32, help="overview pixels per frame")
    parser.add_argument("--whisper-model", help="local faster-whisper model folder for transcribe()")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    return parser


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None, default_model=None, default_video: str | None = None) -> None:
    """Entry point. `default_model`: a callable returning a checkpoint folder, used when --model is not given
    (examples/video_agent.py passes the small-checkpoint builder); `default_video`: makes --video optional."""
    args = build_parser(default_model is None, default_video).parse_args(argv)
    for flag in ("max_steps", "max_new_tokens", "max_context_tokens", "coarse_frames", "coarse_max_pixels"):
        if getattr(args, flag) < 1:
            _fail(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.coarse_fps > 0:
        _fail(f"--coarse-fps must be positive, got {args.coarse_fps}")
    if not os.path.isfile(args.video):
        _fail(f"--video {args.video!r}: no such file")
    if args.transcript and not Path(args.transcript).resolve().parent.is_dir():
        _fail(f"--transcript {args.transcript!r}: folder does not exist")
    if args.whisper_model and not os.path.isdir(args.whisper_model):
        _fail(f"--whisper-model {args.whisper_model!r}: no such folder")
    if not args.question.strip():
        _fail("--question is empty")

    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    from .chat import LatentCacheChat
    from .loop import AgentBudget, VideoAgent, format_transcript, write_transcript
    from .tools import ClipSettings

    model_path = args.model or str(default_model())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    coarse = ClipSettings(fps=args.coarse_fps, max_frames=args.coarse_frames, max_pixels=args.coarse_max_pixels)
    try:
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    except (OSError, ValueError) as err:
        _fail(f"--model {model_path!r}: {str(err).splitlines()[0]}")
    try:  # decode the overview before loading the weights, so a bad video fails fast
        processor.load_video(args.video, **{k: v for k, v in coarse.item(args.video).items() if k not in ("type", "video")})
    except (OSError, ValueError) as err:  # VideoLoadError is a ValueError naming the file
        _fail(f"--video {args.video!r}: {err}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path, trust_remote_code=True, dtype=getattr(torch, args.dtype)
        ).to(device)
    except (OSError, ValueError) as err:
        _fail(f"--model {model_path!r}: {str(err).splitlines()[0]}")
    budget = AgentBudget(args.max_steps, args.max_new_tokens, args.max_context_tokens)
    agent = VideoAgent(
        LatentCacheChat(model.eval(), processor), args.video, budget, coarse, whisper_model=args.whisper_model
    )
    result = agent.run(args.question)

    print(format_transcript(result.events))
    print(f"answer: {' '.join(result.answer.split())}")
    print(f"steps: {result.steps}")
    print(f"prefill tokens saved: {result.prefill_tokens_saved}")
    per_token = result.cache_bytes / result.cache_tokens if result.cache_tokens else 0.0
    print(f"cache bytes: {result.cache_bytes} ({result.cache_tokens} tokens, {per_token:,.0f} bytes/token)")
    if args.transcript:
        path = write_transcript(
            args.transcript, result, model=model_path, video=args.video, question=args.question
        )
        print(f"transcript: {path}")


if __name__ == "__main__":
    main()
