"""The long-video agent on a real clip: tool calls, one shared conversation, the latent cache reused across turns.

    python examples/video_agent.py                                   # small local checkpoint, shipped clip
    python examples/video_agent.py --model DIR --video clip.mp4 --question "When does the dog jump?" \
        --max-steps 8 --transcript run.json

A thin wrapper of the `internvideo3-agent` console script (`internvideo3/agent/cli.py`): without `--model` it uses
the small randomly initialised checkpoint that `examples/generate_video.py` builds once, so the answer is random text
while the transcript, the tool plumbing and the cache accounting are real. Prints the transcript, then
`answer: <text>`, `steps: <n>`, `prefill tokens saved: <n>` and the cache bytes.
"""

from generate_video import DEFAULT_VIDEO, ensure_small_checkpoint  # this folder is on sys.path when run as a script

from internvideo3.agent.cli import main

if __name__ == "__main__":
    main(default_model=ensure_small_checkpoint, default_video=str(DEFAULT_VIDEO))
