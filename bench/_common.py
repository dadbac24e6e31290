"""Helpers the benchmarks share: /proc memory readings, the source models they build, loading a module from a file.

Scripts import it as `from _common import ...` (a script's own folder is sys.path[0] when it runs as
`python bench/<name>.py`). Module-level imports are the standard library only, so every interpreter a bench starts
(also bench_preprocess.py's transformers baseline environment, which lacks this package) can import it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------------
# Memory (Linux /proc)
# ----------------------------------------------------------------------------------------------------------------------
def proc_status_mib(*fields: str) -> dict[str, float]:
    """Fields of /proc/self/status (kB there) in MiB: VmRSS (resident now), VmHWM (peak since start or the last
    `reset_peak_rss`), RssAnon (heap), RssFile (file-mapped)."""
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+)", status, re.MULTILINE).group(1)) / 1024 for k in fields}


def current_rss_mib(trim: bool = False) -> float:
    """Resident set size now, MiB. With `trim`, first hand freed heap pages back to the OS (glibc `malloc_trim`):
    without it RSS after prefill still holds the freed prefill transients (measured: ~160 MiB of M²LA's head-grouped
    K/V expansion at 8 layers), so the trimmed value is what decode really keeps resident."""
    if trim:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: report untrimmed
            pass
    return proc_status_mib("VmRSS")["VmRSS"]


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux `clear_refs` value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


# ----------------------------------------------------------------------------------------------------------------------
# Source models (transformers' own classes, or their checkpoint layout)
# ----------------------------------------------------------------------------------------------------------------------
# Qwen3-VL-8B's text widths (a Qwen3-8B-shaped decoder)
QWEN3_8B_TEXT = dict(hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=5_000_000.0)


def qwen3vl_text_model(layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, mrope):
    """transformers' `Qwen3VLTextModel` (GQA, interleaved MRoPE `mrope`), randomly initialised."""
    from transformers import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

    config = Qwen3VLTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, rope_theta=5_000_000.0,
        rope_scaling={"rope_type": "default", "mrope_section": mrope, "mrope_interleaved": True},
    )
    return Qwen3VLTextModel(config)


def qwen3_source_model(args, vocab_size: int, eos: int):
    """transformers' `Qwen3ForCausalLM` of widths `args.hidden`, `.layers`, `.heads`, `.kv_heads`, `.head_dim`
    (MLP 3 × hidden), seeded: the converter quality benches' source before training."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6,
        eos_token_id=eos, pad_token_id=eos, bos_token_id=None,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config)


def write_qwen3_source(folder: Path, layers: int, seed: int = 0) -> int:
    """Write a random bf16 Qwen3 checkpoint at `QWEN3_8B_TEXT` widths (config.json, one shard per layer + index)
    without ever holding the model: the converter's streaming-memory source. Returns its size in bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    c = QWEN3_8B_TEXT
    D, H, G, d, F, V = (c[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                       "intermediate_size", "vocab_size"))
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
    ones = lambda n: (1 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)  # noqa: E731
    shards = [{"model.embed_tokens.weight": rand(V, D)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({
            p + "self_attn.q_proj.weight": rand(H * d, D), p + "self_attn.k_proj.weight": rand(G * d, D),
            p + "self_attn.v_proj.weight": rand(G * d, D), p + "self_attn.o_proj.weight": rand(D, H * d),
            p + "self_attn.q_norm.weight": ones(d), p + "self_attn.k_norm.weight": ones(d),
            p + "mlp.gate_proj.weight": rand(F, D), p + "mlp.up_proj.weight": rand(F, D),
            p + "mlp.down_proj.weight": rand(D, F), p + "input_layernorm.weight": ones(D),
            p + "post_attention_layernorm.weight": ones(D),
        })
    shards.append({"model.norm.weight": ones(D), "lm_head.weight": rand(V, D)})
    weight_map, total = {}, 0
    for n, tensors in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config = dict(c, model_type="qwen3", architectures=["Qwen3ForCausalLM"], num_hidden_layers=layers,
                  max_position_embeddings=40960, tie_word_embeddings=False, hidden_act="silu", dtype="bfloat16",
                  attention_bias=False)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return total


# ----------------------------------------------------------------------------------------------------------------------
def module_from_file(name: str, path: str | Path):
    """Import the Python file `path` as module `name` (registered in sys.modules), without touching sys.path: an
    example script used as a library."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
