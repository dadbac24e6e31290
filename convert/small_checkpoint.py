"""Build a small, randomly initialised InternVideo3 checkpoint with the real layout, key names and tokenizer.

The 9 B weights cannot be downloaded here; this folder exercises every code path users take:
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`, `AutoProcessor.from_pretrained(...)` and
`generate()` on a real video. Widths are small, names and shapes follow SPEC §3 exactly (vocabulary, token ids,
patch 16 / temporal patch 2 / merge 2 as the 8B model, so the real processor output fits).

    internvideo3-small-checkpoint --out checkpoints/internvideo3-small
    python -m convert.small_checkpoint --out checkpoints/internvideo3-small      # the same, from a checkout's root
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from configuration_internvideo3 import InternVideo3Config
from modeling_internvideo3 import InternVideo3ForConditionalGeneration

from .export import REMOTE_CODE_FILES, load_processor, save_model_folder

SMALL_TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    head_dim=16,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=16,
    v_head_dim=16,
    mrope_section=[2, 3, 3],
    source_num_key_value_heads=2,
)
SMALL_VISION_CONFIG = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    deepstack_visual_indexes=[0, 1, 2],
)


def small_config(**text_overrides) -> InternVideo3Config:
    """The small test configuration (real vocabulary, token ids, patching; small widths)."""
    return InternVideo3Config(
        text_config={**SMALL_TEXT_CONFIG, **text_overrides}, vision_config=dict(SMALL_VISION_CONFIG)
    )


def small_model(seed: int = 0, **text_overrides) -> InternVideo3ForConditionalGeneration:
    """A randomly initialised small model in fp32; attention biases are random too so their loading is tested."""
    torch.manual_seed(seed)
    model = InternVideo3ForConditionalGeneration(small_config(**text_overrides)).eval()
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.kv_a_proj_with_mqa):
                if proj.bias is not None:
                    proj.bias.normal_(0.0, 0.02)
    return model


def build_small_checkpoint(out: str | Path, seed: int = 0, overwrite: bool = False, max_shard_size="5GB") -> Path:
    """Write the small checkpoint folder (safetensors, config with auto_map, processor, tokenizer, remote code)."""
    return save_model_folder(small_model(seed), load_processor(), out, overwrite=overwrite, max_shard_size=max_shard_size)


def save_gqa_twin(model: InternVideo3ForConditionalGeneration, tokenizer_folder: str | Path, out: str | Path,
                  max_position_embeddings: int = 4096) -> Path:
    """Write `out`: a randomly initialised transformers `Qwen3ForCausalLM` with the text widths of `model` before
    conversion, and the tokenizer of `tokenizer_folder`: the GQA model whose vLLM KV cache our latent cache is
    compared with (tests/test_vllm.py, bench/bench_vllm.py). Returns `out`.

    With V = vocab_size, H = hidden_size, I = intermediate_size, n = num_attention_heads,
    g = source_num_key_value_heads and d = head_dim of `model.config.text_config`:
    - config.json (`Qwen3Config`: those widths, num_hidden_layers, num_key_value_heads = g, head_dim = d,
      `max_position_embeddings`; untied embeddings) and generation_config.json;
    - model.safetensors, every tensor float32: model.embed_tokens.weight and lm_head.weight (V, H), model.norm.weight
      (H,); per layer self_attn.q_proj (n·d, H), k_proj and v_proj (g·d, H), o_proj (H, n·d), q_norm and k_norm
      (d,), mlp.gate_proj and up_proj (I, H), down_proj (H, I), input_ and post_attention_layernorm (H,);
    - the tokenizer's files as `save_pretrained` writes them (tokenizer.json, tokenizer_config.json,
      chat_template.jinja)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    text = model.config.text_config
    twin = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.source_num_key_value_heads, head_dim=text.head_dim,
        max_position_embeddings=max_position_embeddings,
    ))  # fmt: skip
    twin.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_folder, trust_remote_code=True).save_pretrained(out)
    return Path(out)


def remote_code_is_current(folder: str | Path) -> bool:
    """True when every flat remote-code file in `folder` equals the repository's copy byte for byte."""
    folder = Path(folder)
    return all(
        (folder / name).is_file() and (folder / name).read_bytes() == source.read_bytes()
        for name, source in REMOTE_CODE_FILES.items()
    )


def ensure_small_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """The small checkpoint folder at `path`, (re)built when it is missing or its remote code differs from the
    repository's, so an old folder never keeps running stale model code. Returns `path` as a Path."""
    path = Path(path)
    if not (path / "config.json").is_file() or not remote_code_is_current(path):
        reason = "once" if not (path / "config.json").is_file() else "its remote code differs from the repository's"
        print(f"building the small checkpoint in {path} ({reason})")
        build_small_checkpoint(path, seed=seed, overwrite=True)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="internvideo3-small-checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    print(build_small_checkpoint(args.out, seed=args.seed, overwrite=args.overwrite))


if __name__ == "__main__":
    main()
