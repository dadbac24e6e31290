"""The main job: load an InternVideo3 checkpoint through the Auto classes and answer a question about a real video.

    python examples/generate_video.py                                    # small local checkpoint, shipped clip
    python examples/generate_video.py --model yanziang/InternVideo3-8B-Instruct --video clip.mp4 --fps 2

Prints the answer, the number of visual tokens, `video_grid_thw: [t, h, w]` (patch grid before merging), and the
KV-cache bytes per token measured from the cache object next to what a GQA cache of the same model would need.
Without `--model` it builds a small randomly initialised checkpoint with the real layout and tokenizer in
`checkpoints/internvideo3-small/` (once, and again whenever the repository's remote-code files change): its answer
is random text, everything else is the real pipeline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from modeling_internvideo3 import CACHE_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO_ROOT / "assets" / "snow_dog.mp4"
SMALL_CHECKPOINT = REPO_ROOT / "checkpoints" / "internvideo3-small"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder or Hub id (default: the small local checkpoint)")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file or URL")
    parser.add_argument("--question", default="What is happening in this video?")
    parser.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video")
    parser.add_argument("--max-frames", type=int, default=64, help="upper bound on sampled frames")
    parser.add_argument("--max-pixels", type=int, default=None, help="upper bound on pixels per frame")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)

    if args.model is None:
        from internvideo3.convert.small_checkpoint import ensure_small_checkpoint

    model_path = args.model or str(ensure_small_checkpoint(SMALL_CHECKPOINT))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_path, trust_remote_code=True, dtype=getattr(torch, args.dtype)
    ).to(device)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)

    video = {"type": "video", "video": args.video, "fps": args.fps, "max_frames": args.max_frames}
    if args.max_pixels is not None:
        video["max_pixels"] = args.max_pixels
    messages = [{"role": "user", "content": [video, {"type": "text", "text": args.question}]}]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    ).to(device)

    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True)
    seconds = time.perf_counter() - start
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
    answer = processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    text_config = model.config.get_text_config()
    cache = getattr(out, CACHE_NAME)  # the field follows the installed transformers (`cache` from 5.24)
    element = torch.finfo(model.dtype).bits // 8
    measured = cache.bytes_per_token()
    gqa = text_config.gqa_cache_values_per_token() * element
    visual_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    print(f"answer: {answer}")
    print(f"visual tokens: {visual_tokens} of {inputs['input_ids'].shape[1]} prompt tokens")
    for grid in inputs["video_grid_thw"].tolist():
        print(f"video_grid_thw: {grid}")
    print(
        f"KV cache: {measured:,.0f} bytes/token measured (M²LA latent {text_config.kv_lora_rank} + rope key "
        f"{text_config.qk_rope_head_dim}, {text_config.num_hidden_layers} layers, {model.dtype}) vs {gqa:,} "
        f"bytes/token for a GQA cache of the same model ({text_config.source_num_key_value_heads} KV heads x "
        f"{text_config.head_dim}): ratio {measured / gqa:.3f}"
    )
    print(f"generated {new_tokens.shape[1]} tokens in {seconds:.2f} s on {device}")


if __name__ == "__main__":
    main()
