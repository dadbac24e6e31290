"""The long-video agent on a real clip: tool calls, one shared conversation, the latent cache reused across turns.

    python examples/video_agent.py                                   # small local checkpoint, shipped clip
    python examples/video_agent.py --model DIR --video clip.mp4 --question "When does the dog jump?" \
        --max-steps 8 --transcript run.json

A thin wrapper of the `internvideo3-agent` console script (`internvideo3/agent/cli.py`). Without `--model` it uses the
small randomly initialised checkpoint `examples/generate_video.py` uses (`checkpoints/internvideo3-small/`, built or
rebuilt by `internvideo3.convert.small_checkpoint.ensure_small_checkpoint`), so the answer is random text while the
transcript, the tool plumbing and the cache accounting are real. Prints the transcript, then `answer: <text>`, `steps: <n>`,
`prefill tokens saved: <n>` and the cache bytes.
"""

from generate_video import DEFAULT_VIDEO, SMALL_CHECKPOINT  # this folder is sys.path[0] for a script

from internvideo3.agent.cli import main


def small_checkpoint() -> str:
    """The small checkpoint folder, built or refreshed by `internvideo3.convert.small_checkpoint`."""
    from internvideo3.convert.small_checkpoint import ensure_small_checkpoint

    return str(ensure_small_checkpoint(SMALL_CHECKPOINT))


if __name__ == "__main__":
    main(default_model=small_checkpoint, default_video=str(DEFAULT_VIDEO))
