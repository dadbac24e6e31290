"""Turn time and peak memory of `LatentCacheChat` over 5 turns of one conversation with one default clip.

    python bench/bench_agent_turns.py --turns 5                      # builds the small checkpoint in a temp folder
    PYTHONPATH=/path/to/other/checkout python bench/bench_agent_turns.py   # the same on another commit

The conversation: a question over one clip with the tools' default sampling (`ClipSettings()`: 2 fps, at most 64
frames, 256 merged patches per frame: 192 MiB of float32 pixel rows), then each turn the reply and a text tool result.
Per turn: wall seconds of `respond()` and the peak resident memory above the memory before the turn (MiB, sampled
every 2 ms by a thread from /proc/self/statm), plus how often the processor patchified an item (its parts' `patch_writer`).
The small checkpoint's replies are random text; what is measured is the per-turn cost around the model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from internvideo3.agent import ClipSettings, LatentCacheChat
from internvideo3.convert.small_checkpoint import build_small_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """Peak resident set size (bytes) while the block runs, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(REPO_ROOT / "tests" / "data" / "videos" / "pole_vault.mp4"))
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--start", type=float, default=10.0)
    parser.add_argument("--end", type=float, default=42.0)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_small_checkpoint(Path(tmp) / "small")
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    patchified = []
    for part in (processor.image_processor, processor.video_processor):
        part.patch_writer = lambda writer=part.patch_writer: patchified.append(1) or writer()
    chat = LatentCacheChat(model, processor)
    clip = ClipSettings().item(args.video, args.start, args.end)
    messages = [{"role": "user", "content": [clip, {"type": "text", "text": "What happens? Cite timestamps."}]}]
    chat.load_video(clip)  # decoded once either way (cached by the chat): the turns measure what follows
    import internvideo3

    print(f"code: {Path(internvideo3.__file__).parents[1]}; torch threads {torch.get_num_threads()}; clip {clip}")
    print("turn | prompt tokens | prefilled | seconds | peak RSS above start of turn (MiB) | videos patchified")
    total = 0.0
    for turn in range(args.turns):
        before = len(patchified)
        with PeakRSS() as memory:
            reply = chat.respond(messages, max_new_tokens=args.max_new_tokens)
        total += reply.seconds if turn else 0.0
        print(
            f"{turn + 1:4d} | {reply.prompt_tokens:13,d} | {reply.prefilled_tokens:9,d} | {reply.seconds:7.3f} | "
            f"{(memory.peak - memory.base) / 2**20:8.1f} | {len(patchified) - before}"
        )
        messages += [{"role": "assistant", "content": reply.text}, {"role": "tool", "content": f"note {turn} saved."}]
    print(f"turns 2-{args.turns}: {total:.3f} s in all, {total / max(args.turns - 1, 1):.3f} s per turn")


if __name__ == "__main__":
    main()
