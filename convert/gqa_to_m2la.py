"""Convert a GQA/MHA transformers checkpoint (Qwen3-VL, Qwen3, Qwen2/2.5, Llama) into an M²LA folder (SPEC §9).

    internvideo3-convert --src Qwen3-VL-8B-Instruct --out InternVideo3-conv --kv-lora-rank 896
    internvideo3-convert --src qwen3-0.6b --out qwen3-m2la --kv-lora-rank 256 --calibration notes.txt

(`python -m convert.gqa_to_m2la ...` runs the same from a checkout's root.)

Qwen3-VL sources become the full InternVideo3 model (`model.language_model.*`, vision tower `model.visual.*` copied
unchanged); text-only sources become an `InternVideo3TextForCausalLM` folder (`model.*`, `lm_head.weight`). Both load
with `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`.

Method (details and math in `convert/m2la_math.py`; the default recipe is the best measured by
`bench/convert_quality.py --study`, issue 13): q_norm kept exact as a module and k_norm fitted by least squares
(Qwen3 family), exact MLA rewrite, RoRoPE per frequency plane (never mixes MRoPE axes), a shared RoPE key of
`--rope-dim` channels holding the rotated components of most query × key energy, joint K/V-balanced PCA of
[K_nope; V] to `kv_lora_rank` on calibration activations, pair-interleaved RoPE rows, softmax-scale fix, zero-fill
of dims the source lacks. `--cache-values` asks for r + d_r and splits it by the measured rule.

Calibration: text (default: Python standard-library documentation) and, for Qwen3-VL sources, videos through the
InternVideo3 processor and the source vision tower (3-D MRoPE positions, DeepStack), streamed through the source
layer by layer.

Streaming: the source is read tensor by tensor with `safe_open`; one layer's weights, its calibration statistics and
the calibration hidden states ([tokens, hidden]) are in memory at a time, plus converted tensors waiting for their
shard (at most `--max-shard-size-gb`). Shards and their index are written into a hidden temporary folder that is
renamed to `--out` only when complete, so an interrupted run leaves nothing loadable (its leftovers are named
`.<out>.incomplete-*` and removed by the next run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .calibration import calibration_token_ids, load_tokenizer, read_calibration_files, stdlib_docstrings
from .export import (
    atomic_folder,
    check_output_free,
    portable_tokenizer_config,
    set_auto_map,
    write_remote_code,
)
from .m2la_math import (
    QK_NORM_TREATMENTS,
    ROPE_SELECTIONS,
    SourceAttention,
    build_m2la_layer,
    exact_rope_components,
    key_plane_covariance,
    linearize_qk_norm,
    rorope_attention,
    rorope_basis,
    select_rope_components,
)

TEXT_MODEL_TYPES = {"qwen3", "qwen2", "llama"}
VL_MODEL_TYPES = {"qwen3_vl"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json", "tokenizer.model",
)
ATTENTION_SOURCE_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")


class ConversionError(ValueError):
    """A source the converter cannot handle (architecture, shapes, files); the message says what and why."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading the source
# ----------------------------------------------------------------------------------------------------------------------


class TensorReader:
    """Lazy access to the tensors of a safetensors checkpoint folder (single file or sharded with an index)."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                bins = sorted(folder.glob("*.bin"))
                hint = " (it has .bin weights: re-save them with safe_serialization=True)" if bins else ""
                raise ConversionError(f"no safetensors weights in {folder}{hint}")
            weight_map = {}
            for file in files:
                with _open_safetensors(file) as f:
                    weight_map.update({key: file.name for key in f.keys()})
        missing = sorted({name for name in weight_map.values() if not (folder / name).is_file()})
        if missing:
            raise ConversionError(f"{folder}: shard files listed in the index are missing: {missing}")
        for name in sorted(set(weight_map.values())):  # every header parses before anything is written
            with _open_safetensors(folder / name):
                pass
        self.folder = folder
        self.weight_map = weight_map

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def parameter_count(self) -> int:
        """Elements of all tensors (from the shard headers; no tensor is read)."""
        total = 0
        for name in sorted(set(self.weight_map.values())):
            with _open_safetensors(self.folder / name) as f:
                for key in f.keys():
                    shape = f.get_slice(key).get_shape()
                    total += int(torch.tensor(shape).prod()) if shape else 1
        return total

    def get(self, key: str) -> torch.Tensor:
        """One tensor, copied out of its shard. The shard is opened per call (a header parse, well under a
        millisecond) so no memory map stays open: the read pages of earlier layers leave the resident set."""
        name = self.weight_map.get(key)
        if name is None:
            raise ConversionError(f"tensor {key!r} is missing from {self.folder}")
        with _open_safetensors(self.folder / name) as f:
            return f.get_tensor(key)


def _open_safetensors(path: Path):
    """`safe_open`, a truncated or corrupt file raised as a ConversionError naming it (as our messages name paths)."""
    from modeling_internvideo3 import open_safetensors  # here: transformers' modeling import takes seconds

    return open_safetensors(path, ConversionError, name=str(path))


@dataclass
class SourceArch:
    """What the converter needs to know about the source text decoder (read from config.json, checked on keys)."""

    model_type: str
    is_vl: bool
    prefix: str  # "model.language_model." or "model."
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list
    mrope_interleaved: bool
    max_position_embeddings: int
    tie_word_embeddings: bool
    qk_norm: bool
    attention_bias: bool
    dtype: torch.dtype
    config: dict  # the raw source config.json

    @property
    def text_config(self) -> dict:
        return self.config["text_config"] if self.is_vl else self.config


def _rope_fields(cfg: dict) -> tuple[float, dict]:
    merged = {}
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict):
            merged.update(cfg[key])
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return float(theta), merged


def read_source_arch(src: Path) -> SourceArch:
    """Parse and validate the source's config.json. Raises ConversionError naming what is unsupported."""
    config_file = src / "config.json"
    if not src.is_dir():
        raise ConversionError(f"source folder not found: {src}")
    if not config_file.is_file():
        raise ConversionError(f"{src} has no config.json: not a transformers checkpoint folder")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type not in TEXT_MODEL_TYPES | VL_MODEL_TYPES:
        supported = sorted(TEXT_MODEL_TYPES | VL_MODEL_TYPES)
        raise ConversionError(
            f"unsupported architecture model_type={model_type!r} ({config.get('architectures')}); supported: "
            f"{supported} (dense GQA/MHA decoders; MoE, sliding-window and other vision towers are not)"
        )
    is_vl = model_type in VL_MODEL_TYPES
    text = config["text_config"] if is_vl else config
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    head_dim = int(text.get("head_dim") or hidden // heads)
    theta, rope = _rope_fields(text)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConversionError(f"RoPE scaling {rope_type!r} is not supported (M²LA here uses plain (M)RoPE)")
    if float(text.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConversionError("partial rotary embeddings (partial_rotary_factor < 1) are not supported")
    if text.get("use_sliding_window"):
        raise ConversionError("sliding-window attention sources are not supported")
    if text.get("mlp_bias"):
        raise ConversionError("MLP biases (mlp_bias=true) are not supported by the M²LA decoder")
    if text.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act {text.get('hidden_act')!r} is not supported (SwiGLU with silu only)")
    if head_dim % 2:
        raise ConversionError(f"head_dim {head_dim} is odd")
    if is_vl:
        section = list(rope.get("mrope_section", text.get("mrope_section", [24, 20, 20])))
        interleaved = bool(rope.get("mrope_interleaved", True))
    else:  # text only: every frequency follows the single (T) position axis
        section, interleaved = [head_dim // 2, 0, 0], True
    dtype_name = str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
                     or "bfloat16").replace("torch.", "")
    return SourceArch(
        model_type=model_type,
        is_vl=is_vl,
        prefix="model.language_model." if is_vl else "model.",
        hidden_size=hidden,
        num_layers=int(text["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        intermediate_size=int(text["intermediate_size"]),
        vocab_size=int(text["vocab_size"]),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        mrope_section=section,
        mrope_interleaved=interleaved,
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        qk_norm=model_type in ("qwen3", "qwen3_vl"),
        attention_bias=False,  # decided from the keys in `check_source_keys`
        dtype=getattr(torch, dtype_name, torch.bfloat16),
        config=config,
    )


def check_source_keys(arch: SourceArch, reader: TensorReader) -> None:
    """Verify every layer has the tensors the architecture implies; set `arch.attention_bias` from the keys."""
    p = arch.prefix
    layer0 = f"{p}layers.0.self_attn."
    if f"{layer0}q_proj.weight" not in reader:
        raise ConversionError(f"{reader.folder}: no {layer0}q_proj.weight; keys look like {reader.keys()[:3]}")
    biases = {name: f"{layer0}{name}.bias" in reader for name in ("q_proj", "k_proj", "v_proj")}
    if f"{layer0}o_proj.bias" in reader:
        raise ConversionError("o_proj has a bias: not supported by the M²LA layout (SPEC §3)")
    arch.attention_bias = any(biases.values())
    for i in range(arch.num_layers):
        needed = [f"{p}layers.{i}.self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        needed += [f"{p}layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")]
        needed += [f"{p}layers.{i}.mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]
        if arch.qk_norm:
            needed += [f"{p}layers.{i}.self_attn.{n}.weight" for n in ("q_norm", "k_norm")]
        needed += [f"{p}layers.{i}.self_attn.{n}.bias" for n, has in biases.items() if has]
        missing = [k for k in needed if k not in reader]
        if missing:
            raise ConversionError(f"{reader.folder}: layer {i} lacks {missing}")
    for key in (f"{p}embed_tokens.weight", f"{p}norm.weight"):
        if key not in reader:
            raise ConversionError(f"{reader.folder}: missing {key}")


# ----------------------------------------------------------------------------------------------------------------------
# Writing the output
# ----------------------------------------------------------------------------------------------------------------------


class ShardWriter:
    """Accumulate tensors and write safetensors shards of at most `max_shard_bytes`, then the index."""

    def __init__(self, folder: Path, max_shard_bytes: int):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + nbytes > self.max_shard_bytes:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffer_bytes += nbytes
        self.total_bytes += nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        save_file(self.buffer, str(self.folder / f"shard-{len(self.shards):05d}.tmp"), metadata={"format": "pt"})
        self.shards.append(sorted(self.buffer))
        self.buffer, self.buffer_bytes = {}, 0

    def finish(self) -> None:
        """Name the shards `model-0000i-of-0000n.safetensors` (or `model.safetensors`) and write the index."""
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.folder / f"shard-{i:05d}.tmp").rename(self.folder / final)
            weight_map.update({name: final for name in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))


def check_tokenizer(src: Path, arch: SourceArch, o: ConvertOptions) -> Path | None:
    """The tokenizer folder to calibrate with and ship: `--tokenizer`, else the source's own; None only when no text
    is tokenized (`calibration_ids`) and the source is text-only (the output then has no tokenizer).

    A tokenizer with more tokens than the source embeds never travels with the model: its ids would index past the
    embedding on the first prompt.

    Raises:
        ConversionError: no tokenizer where one is needed, an unloadable one, or one larger than the vocabulary.
    """
    from transformers import AutoTokenizer

    folder = Path(o.tokenizer) if o.tokenizer else (src if _has_tokenizer(src) else None)
    if folder is None:
        if o.calibration_ids is None or arch.is_vl:
            raise ConversionError(f"{src} has no tokenizer (tokenizer.json or tokenizer_config.json): pass --tokenizer "
                                  f"PATH, the folder of the tokenizer the source model was trained with")
        return None
    if not _has_tokenizer(folder):
        raise ConversionError(f"--tokenizer {folder}: no tokenizer.json or tokenizer_config.json there")
    try:
        size = len(AutoTokenizer.from_pretrained(str(folder)))
    except Exception as error:  # noqa: BLE001 - any loader failure is reported with the folder's name
        raise ConversionError(f"cannot load the tokenizer in {folder}: {error}") from error
    if size > arch.vocab_size:
        raise ConversionError(
            f"the tokenizer in {folder} has {size} tokens but {src} embeds only {arch.vocab_size}: it does not fit "
            f"this model (token ids >= {arch.vocab_size} would crash its embedding); pass the tokenizer the source "
            f"model was trained with (--tokenizer PATH)"
        )
    return folder


def write_processor(src: Path, tmp: Path, is_vl: bool, tokenizer: Path | None = None) -> None:
    """Tokenizer / processor files from `tokenizer` (checked by `check_tokenizer`; None: none are written): the
    InternVideo3 processor around it for Qwen3-VL sources, else its tokenizer files; and the source's
    `generation_config.json` if any."""
    from .export import load_processor

    folder = tokenizer
    if folder is None:
        print(f"note: no tokenizer written to the output ({src} has none and none was given)", file=sys.stderr)
    elif is_vl:
        load_processor(folder).save_pretrained(tmp)
    else:
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
    portable_tokenizer_config(tmp)
    if (src / "generation_config.json").is_file():
        shutil.copyfile(src / "generation_config.json", tmp / "generation_config.json")


def build_target_config(arch: SourceArch, ranks: list[int], d_n: int, d_r: int, d_v: int, with_bias: bool,
                        dtype: torch.dtype):
    """The InternVideo3 (or text-only) config of the converted model, with `auto_map`."""
    from configuration_internvideo3 import InternVideo3Config, InternVideo3TextConfig

    text = arch.text_config
    tokens = {k: text.get(k, arch.config.get(k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    text_kwargs = dict(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        head_dim=arch.head_dim,
        kv_lora_rank=ranks[0],
        kv_lora_rank_list=ranks if len(set(ranks)) > 1 else None,
        qk_nope_head_dim=d_n,
        qk_rope_head_dim=d_r,
        v_head_dim=d_v,
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=arch.rms_norm_eps,
        attention_bias=with_bias,
        qk_latent_layernorm=False,
        # Planes picked out of the source's head_dim RoPE; the converter fills in each layer's choice.
        rope_frequency_planes=[[j % (arch.head_dim // 2) for j in range(d_r // 2)]] * arch.num_layers
        if d_r != arch.head_dim else None,
        rope_interleave=True,
        rope_theta=arch.rope_theta,
        mrope_section=arch.mrope_section,
        mrope_interleaved=arch.mrope_interleaved,
        tie_word_embeddings=arch.tie_word_embeddings,
        source_num_key_value_heads=arch.num_kv_heads,
    )
    if arch.is_vl:
        vision_fields = ("depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels",
                         "patch_size", "spatial_merge_size", "temporal_patch_size", "out_hidden_size",
                         "num_position_embeddings", "deepstack_visual_indexes", "initializer_range")
        vision = {k: v for k, v in arch.config["vision_config"].items() if k in vision_fields}
        ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        config = InternVideo3Config(
            text_config=text_kwargs,
            vision_config=vision,
            tie_word_embeddings=arch.tie_word_embeddings,
            **{k: arch.config[k] for k in ids if k in arch.config},
            **{k: v for k, v in tokens.items() if v is not None},
        )
    else:
        config = InternVideo3TextConfig(**text_kwargs, **{k: v for k, v in tokens.items() if v is not None})
    set_auto_map(config)
    config.dtype = dtype  # 4.57.3 and 5.x both store `dtype` (`torch_dtype` is a deprecated alias)
    return config


# ----------------------------------------------------------------------------------------------------------------------
# The per-layer pipeline
# ----------------------------------------------------------------------------------------------------------------------


def _rotary(arch: SourceArch):
    """The source's (M)RoPE of width head_dim as a function of positions [3, B, S] | [B, S] -> (cos, sin)."""
    from configuration_internvideo3 import InternVideo3TextConfig
    from modeling_internvideo3 import InternVideo3TextRotaryEmbedding

    rotary = InternVideo3TextRotaryEmbedding(InternVideo3TextConfig(
        head_dim=arch.head_dim, qk_rope_head_dim=arch.head_dim, rope_theta=arch.rope_theta,
        mrope_section=arch.mrope_section, mrope_interleaved=arch.mrope_interleaved,
    ))
    return lambda positions: rotary(positions, positions)  # the first argument gives only the device


def load_source_attention(arch: SourceArch, reader: TensorReader, i: int) -> SourceAttention:
    """Layer i's source attention tensors in float64."""
    a = f"{arch.prefix}layers.{i}.self_attn."
    opt = lambda key: reader.get(a + key).double() if a + key in reader else None  # noqa: E731
    return SourceAttention(
        wq=reader.get(a + "q_proj.weight").double(), wk=reader.get(a + "k_proj.weight").double(),
        wv=reader.get(a + "v_proj.weight").double(), wo=reader.get(a + "o_proj.weight").double(),
        num_heads=arch.num_heads, num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
        bq=opt("q_proj.bias"), bk=opt("k_proj.bias"), bv=opt("v_proj.bias"),
        q_norm=opt("q_norm.weight"), k_norm=opt("k_norm.weight"), eps=arch.rms_norm_eps,
    )


def source_mlp(reader: TensorReader, prefix: str):
    """Layer `prefix`'s SwiGLU MLP in fp32 as a function of x [..., D]."""
    gate, up, down = (reader.get(f"{prefix}mlp.{n}_proj.weight").float() for n in ("gate", "up", "down"))
    return lambda x: (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def m2la_attention(arch: SourceArch, weights, rank: int, d_n: int, d_v: int):
    """The converted layer as the real `InternVideo3TextAttention` (fp32), as a function of (x [B, S, D], cos, sin)
    with cos / sin the source's rotate-half RoPE of width head_dim."""
    import modeling_internvideo3 as modeling
    from configuration_internvideo3 import InternVideo3TextConfig

    cfg = InternVideo3TextConfig(
        vocab_size=8, hidden_size=arch.hidden_size, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=arch.num_heads, head_dim=arch.head_dim, kv_lora_rank=rank, qk_nope_head_dim=d_n,
        qk_rope_head_dim=2 * len(weights.rope_planes), v_head_dim=d_v, attention_bias=weights.q_proj_bias is not None,
        rope_theta=arch.rope_theta, mrope_section=arch.mrope_section, mrope_interleaved=arch.mrope_interleaved,
        q_norm=weights.q_norm_weight is not None, rope_frequency_planes=[weights.rope_planes],
        k_norm=weights.k_norm_weight is not None,
    )
    cfg._attn_implementation = "sdpa"
    attn = modeling.InternVideo3TextAttention(cfg, 0).float()
    with torch.no_grad():
        attn.q_proj.weight.copy_(weights.q_proj_weight)
        attn.kv_a_proj_with_mqa.weight.copy_(weights.kv_a_weight)
        attn.kv_b_proj.weight.copy_(weights.kv_b_weight)
        attn.o_proj.weight.copy_(weights.o_proj_weight)
        if weights.q_norm_weight is not None:
            attn.q_norm.weight.copy_(weights.q_norm_weight)
        if weights.k_norm_weight is not None:
            attn.k_norm.weight.copy_(weights.k_norm_weight)
        if weights.q_proj_bias is not None:
            attn.q_proj.bias.copy_(weights.q_proj_bias)
            attn.kv_a_proj_with_mqa.bias.copy_(weights.kv_a_bias)

    @torch.no_grad()
    def run(x, cos, sin):
        return attn(x, (cos, sin), modeling.AttentionMaskSpec(None, x.shape[1], 0), None)[0]

    return run


@dataclass
class CalibrationBatch:
    """Calibration activations streamed through the source, one layer at a time (SPEC §9.6).

    hidden [b, S, D] fp32 is the residual stream entering the current layer; cos / sin [b, S, d] its (M)RoPE
    (rotate-half); video samples also carry visual_mask [b, S] bool and the DeepStack features (list of
    [n_visual, D]) that Qwen3-VL adds after decoder layers 0..k-1. measure_rows: rows used for the per-layer error.
    """

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    visual_mask: torch.Tensor | None = None
    deepstack: list | None = None
    measure_rows: int = 2

    def advance(self, attn_out: torch.Tensor, post_norm: torch.Tensor, mlp, eps: float, layer: int) -> None:
        """Finish source layer `layer` given its attention output [b, S, D]: residual, post-attention RMSNorm +
        MLP, residual, then the layer's DeepStack features at the visual positions (layers 0..k-1)."""
        from modeling_internvideo3 import rms_norm  # here: transformers' modeling import takes seconds

        self.hidden = self.hidden + attn_out
        self.hidden = self.hidden + mlp(rms_norm(self.hidden, post_norm.to(self.hidden.dtype), eps))
        if self.deepstack is not None and layer < len(self.deepstack):
            self.hidden[self.visual_mask] += self.deepstack[layer]


VIDEO_PROMPT = "Describe this video in detail."


def video_prompt_inputs(processor, path, fps: float, max_frames: int):
    """The processor's inputs (input_ids [1, S], pixel_values_videos, video_grid_thw) for one calibration video."""
    messages = [{"role": "user", "content": [
        {"type": "video", "video": str(path), "fps": fps, "max_frames": max_frames},
        {"type": "text", "text": VIDEO_PROMPT},
    ]}]
    return processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                         return_tensors="pt")


def video_calibration_batches(arch: SourceArch, reader: TensorReader, config, embed: torch.Tensor, videos,
                              tokenizer_dir: Path, fps: float, max_frames: int) -> list[CalibrationBatch]:
    """One batch per video: the InternVideo3 processor's prompt (a video and `VIDEO_PROMPT`), the source vision tower
    (loaded alone, fp32, freed afterwards) injected at the `<|video_pad|>` positions, and Qwen3-VL's 3-D MRoPE
    positions (`InternVideo3Model.get_rope_index`).

    Raises:
        ConversionError: a video that cannot be opened or decoded (named, with the processor's reason).
    """
    from types import SimpleNamespace

    from accelerate import init_empty_weights

    import modeling_internvideo3 as modeling
    from processing_internvideo3 import VideoLoadError

    from .export import load_processor

    processor = load_processor(tokenizer_dir)
    # No random init of the tower's weights (assigned below); buffers stay real: the rotary's inv_freq is not stored.
    with init_empty_weights(include_buffers=False):
        vision = modeling.InternVideo3VisionModel(config.vision_config)
    state = {k[len("model.visual."):]: reader.get(k).float() for k in reader.keys() if k.startswith("model.visual.")}
    vision.load_state_dict(state, strict=True, assign=True)
    vision.eval()
    rotary, batches = _rotary(arch), []
    for path in videos:
        try:
            inputs = video_prompt_inputs(processor, path, fps, max_frames)
        except VideoLoadError as error:
            raise ConversionError(f"--calibration: {error}") from error
        ids, grid = inputs["input_ids"], inputs["video_grid_thw"]
        with torch.no_grad():
            features = vision(inputs["pixel_values_videos"].float(), grid)
        mask = ids == config.video_token_id
        hidden = embed[ids].float()
        hidden[mask] = features.pooler_output
        positions, _ = modeling.InternVideo3Model.get_rope_index(SimpleNamespace(config=config), ids, None, grid)
        cos, sin = rotary(positions)
        batches.append(CalibrationBatch(hidden, cos, sin, mask, list(features.deepstack_features), measure_rows=1))
    return batches


Q_NORM_MODES = ("exact", "fit")
K_NORM_MODES = ("exact", "fit")
# The equal-cache exact form (SPEC §9.4: d_r = r = G·head_dim) widens q_proj by H·G·head_dim rows per layer over
# the source's; `--cache-values` picks it by itself while that adds at most this share of the source's parameters
# (issue 27: 17 % and 23 % on the two bench models, 55 % on Qwen3-VL-8B, which keeps the measured split).
EXACT_FORM_MAX_EXTRA_PARAMS = 0.25


QK_NORM_CHOICES = ("auto",) + QK_NORM_TREATMENTS
# "auto" fits k_norm on the whole layer input once there are this many calibration tokens per input dim (D + 1);
# below it that fit over-fits (bench/RESULTS.md, issue 13: 2.7 tokens per dim gave 1.077x the source perplexity,
# 10.6 gave 1.012x).
INPUT_FIT_TOKENS_PER_DIM = 8


def split_cache_values(cache_values: int, num_kv_heads: int, head_dim: int, rope_dim: int | None = None,
                       exact_form: bool = False) -> tuple[int, int]:
    """(kv_lora_rank r, RoPE width d_r) for a cache of `cache_values` = r + d_r values per token and layer.

    exact_form: at the GQA cache size (2·G·head_dim) and without `rope_dim`, the equal-cache exact form r = d_r =
    G·head_dim (SPEC §9.4; the caller decides whether its wider q_proj is acceptable, `exact_form_cost`).

    Best split measured on bench/convert_quality.py --study (bench/RESULTS.md, issue 13): the RoPE key takes
    d_r = min(2·head_dim, G·head_dim, 3/4 of the budget) (even), the latent the rest; so Qwen3-VL-8B's 1024 gives
    768 + 256. An explicit `rope_dim` is kept and the latent gets the rest.

    Raises:
        ConversionError: a budget that leaves no latent, or more than the source's full [K; V] needs.
    """
    G, d = num_kv_heads, head_dim
    if exact_form and rope_dim is None and cache_values == 2 * G * d:
        return G * d, G * d
    d_r = rope_dim or max(2, min(2 * d, G * d, (3 * cache_values // 4) // 2 * 2))
    rank = cache_values - d_r
    if not 0 < rank <= 2 * G * d - d_r:
        raise ConversionError(f"--cache-values {cache_values} must be in {d_r + 1}..{2 * G * d} for rope dim {d_r} "
                              f"and G={G} KV heads of {d} (a GQA cache holds {2 * G * d})")
    return rank, d_r


@dataclass
class ConvertOptions:
    """Options of `convert` (the CLI flags). Calibration defaults: 2,048 tokens of standard-library documentation."""

    kv_lora_rank: int = 896
    kv_lora_rank_list: list | None = None
    cache_values: int | None = None  # r + d_r per token and layer; overrides kv_lora_rank and rope_dim
    rope_dim: int | None = None  # default: the source head_dim
    rope_selection: str = "qk"  # which rotated key components keep RoPE (m2la_math.ROPE_SELECTIONS)
    q_norm: str = "exact"  # Qwen3 q_norm: "exact" (runtime module q_norm) or "fit" (the --qk-norm treatment)
    k_norm: str = "exact"  # Qwen3 k_norm: "exact" (module k_norm) where every key dim stays rotated, else the fit
    qk_nope_head_dim: int | None = None  # default: the source head_dim
    v_head_dim: int | None = None  # default: the source head_dim
    dtype: str | None = None  # bf16 | fp16 | fp32; default: the source's
    calibration: list | None = None  # text and (Qwen3-VL sources) video files
    calibration_ids: torch.Tensor | None = None  # [B, S] token ids; overrides the text (programmatic use)
    calibration_tokens: int = 2048
    calibration_seq_len: int = 512
    video_fps: float = 2.0
    video_max_frames: int = 16
    qk_norm: str = "auto"  # k_norm (and a fitted q_norm): QK_NORM_CHOICES
    rorope: bool = True
    balance: bool = True
    max_shard_size: int = 2 * 1024**3
    overwrite: bool = False
    tokenizer: str | None = None  # tokenizer folder; default: the source's own (required when it has none)
    measure: bool = True  # per-layer attention output error on the calibration batches
    progress: bool = True


def calibration_batches(arch: SourceArch, reader: TensorReader, config, src: Path,
                        o: ConvertOptions) -> list[CalibrationBatch]:
    """The calibration inputs of layer 0: text rows (all MRoPE axes equal) and, for Qwen3-VL sources, videos.

    Raises:
        ConversionError: video files for a text-only source.
    """
    documents, videos = read_calibration_files(o.calibration) if o.calibration else (list(stdlib_docstrings()), [])
    if videos and not arch.is_vl:
        raise ConversionError(f"video calibration files {[str(v) for v in videos]} need a Qwen3-VL source; "
                              f"{src} is a text-only {arch.model_type}")
    embed = reader.get(f"{arch.prefix}embed_tokens.weight")
    batches = []
    if o.calibration_ids is not None or documents:
        if o.calibration_ids is not None:
            ids = o.calibration_ids.long()
        else:
            ids = calibration_token_ids(documents, load_tokenizer(o.tokenizer or src), arch.vocab_size,
                                        o.calibration_tokens, o.calibration_seq_len)
        B, S = ids.shape
        cos, sin = _rotary(arch)(torch.arange(S)[None].expand(B, S))
        batches.append(CalibrationBatch(embed[ids].float(), cos, sin))
    if videos:
        tokenizer_dir = Path(o.tokenizer or src)
        batches += video_calibration_batches(arch, reader, config, embed, videos, tokenizer_dir, o.video_fps,
                                             o.video_max_frames)
    return batches


@dataclass
class TargetLayout:
    """The converted model's layout, decided from the source and the options before any work (SPEC §3, §9).

    ranks: kv_lora_rank per layer; d_n / d_r / d_v: nope, RoPE and value head widths; with_bias: `q_proj` and
    `kv_a_proj_with_mqa` get biases (source biases or an affine k_norm fit); exact_q_norm: Qwen3's q_norm stays a
    module; qk_norm: the k_norm treatment ("auto" until `resolve_qk_norm` sees the calibration size); exact_k_norm:
    Qwen3's k_norm stays a module (d_r = G·head_dim, `exact_rope_components`); exact_form: the equal-cache exact
    form's cost and whether `--cache-values` chose it ({"chosen", "extra_query_params", "extra_fraction",
    "bound"}; None without `--cache-values`)."""

    ranks: list
    d_n: int
    d_r: int
    d_v: int
    with_bias: bool
    exact_q_norm: bool
    qk_norm: str
    dtype: torch.dtype
    exact_k_norm: bool = False
    exact_form: dict | None = None


def exact_form_cost(arch: SourceArch, source_params: int) -> dict:
    """The equal-cache exact form's extra `q_proj` parameters over the source's (H·G·head_dim rows of hidden_size
    per layer: q_pe widens from nothing to G·head_dim) and their share of the source's `source_params`."""
    extra = arch.num_layers * arch.num_heads * arch.num_kv_heads * arch.head_dim * arch.hidden_size
    fraction = extra / max(source_params, 1)
    return {"extra_query_params": extra, "extra_fraction": fraction, "bound": EXACT_FORM_MAX_EXTRA_PARAMS,
            "chosen": False}


def plan_layout(arch: SourceArch, o: ConvertOptions, source_params: int | None = None) -> TargetLayout:
    """Check the options against the source and choose the target layout.

    `source_params` (the source's parameter count) prices the equal-cache exact form for `--cache-values`.

    Raises:
        ConversionError: a value out of range, an odd or too wide RoPE key, a rank list of the wrong length, a rank
            above (G·d − d_r) + G·d, or an unknown choice; each names its flag.
    """
    check_options(o)
    G, d = arch.num_kv_heads, arch.head_dim
    exact_form = None
    if o.cache_values is not None:
        if source_params is not None:
            exact_form = exact_form_cost(arch, source_params)
            exact_form["chosen"] = (o.cache_values == 2 * G * d and o.rope_dim is None
                                    and exact_form["extra_fraction"] <= EXACT_FORM_MAX_EXTRA_PARAMS)
        rank, d_r = split_cache_values(o.cache_values, G, d, o.rope_dim, bool(exact_form and exact_form["chosen"]))
        if exact_form is not None:  # the measured rule may give the same split (G <= 2)
            exact_form["chosen"] = (rank, d_r) == (G * d, G * d)
        ranks = [rank] * arch.num_layers
    else:
        d_r = o.rope_dim or d
        ranks = list(o.kv_lora_rank_list) if o.kv_lora_rank_list else [o.kv_lora_rank] * arch.num_layers
    if d_r % 2 or not 2 <= d_r <= G * d:
        raise ConversionError(f"--rope-dim {d_r} must be even and in 2..{G * d} (G·head_dim: every key component "
                              f"rotated) for G={G} KV heads of {d}")
    full = (G * d - d_r) + G * d
    if len(ranks) != arch.num_layers:
        raise ConversionError(f"kv_lora_rank_list has {len(ranks)} entries for {arch.num_layers} layers")
    if any(not 0 < r <= full for r in ranks):
        flag = "--kv-lora-rank-list" if o.kv_lora_rank_list else "--kv-lora-rank"
        raise ConversionError(
            f"{flag} {max(ranks)} is larger than possible: [K_nope; V] has (G·d − d_r) + G·d = {full} dims "
            f"(G={G} KV heads, head_dim {d}, rope dim {d_r}); use 1..{full}"
        )
    if o.qk_norm not in QK_NORM_CHOICES:
        raise ConversionError(f"--qk-norm must be one of {QK_NORM_CHOICES}")
    if o.rope_selection not in ROPE_SELECTIONS:
        raise ConversionError(f"--rope-selection must be one of {ROPE_SELECTIONS}")
    if o.q_norm not in Q_NORM_MODES:
        raise ConversionError(f"--q-norm must be one of {Q_NORM_MODES}")
    if o.k_norm not in K_NORM_MODES:
        raise ConversionError(f"--k-norm must be one of {K_NORM_MODES}")
    exact_q_norm = arch.qk_norm and o.q_norm == "exact"
    # k_norm stays exact where every key component keeps its rotation (SPEC §9.4): k_pe then holds the G raw keys.
    exact_k_norm = arch.qk_norm and o.k_norm == "exact" and d_r == G * d
    fitted = arch.qk_norm and o.qk_norm in ("auto", "lstsq", "lstsq-input") and not (exact_q_norm and exact_k_norm)
    return TargetLayout(
        ranks=ranks, d_n=d if o.qk_nope_head_dim is None else o.qk_nope_head_dim, d_r=d_r, d_v=o.v_head_dim or d,
        with_bias=arch.attention_bias or fitted, exact_q_norm=exact_q_norm, qk_norm=o.qk_norm,
        dtype=DTYPES[o.dtype] if o.dtype else arch.dtype, exact_k_norm=exact_k_norm, exact_form=exact_form,
    )


def resolve_qk_norm(qk_norm: str, tokens: int, hidden_size: int) -> str:
    """`--qk-norm auto`: the input-wide fit with at least INPUT_FIT_TOKENS_PER_DIM calibration tokens per input dim
    (D + 1), else the per-head fit; other choices unchanged."""
    if qk_norm != "auto":
        return qk_norm
    return "lstsq-input" if tokens >= INPUT_FIT_TOKENS_PER_DIM * (hidden_size + 1) else "lstsq"


def attention_inputs(arch: SourceArch, reader: TensorReader, i: int, batches: list[CalibrationBatch]) -> list:
    """Layer i's attention input per calibration batch: the input RMSNorm of the residual stream, [b, S, D] fp32."""
    from modeling_internvideo3 import rms_norm  # here: transformers' modeling import takes seconds

    norm = reader.get(f"{arch.prefix}layers.{i}.input_layernorm.weight").float()
    return [rms_norm(b.hidden, norm.to(b.hidden.dtype), arch.rms_norm_eps) for b in batches]


def convert_attention(arch: SourceArch, src_attn: SourceAttention, xs: list, rank: int, layout: TargetLayout,
                      o: ConvertOptions):
    """One layer's M²LA weights (`m2la_math.M2LAWeights`) from its source attention and calibration inputs xs, by
    the method's steps (README "Method", SPEC §9): 1. QK-norm linearised (k_norm fitted, q_norm exact or fitted),
    2. MLA rewrite + RoRoPE basis per frequency plane, 3. the RoPE key's components, then the joint [K_nope; V] PCA
    to `rank`. All in float64 on the inputs' second moment Σ [D+1, D+1]."""
    G, d = arch.num_kv_heads, arch.head_dim
    x_flat = torch.cat([x.reshape(-1, arch.hidden_size) for x in xs]).double()
    x_aug = torch.cat([x_flat, torch.ones(x_flat.shape[0], 1, dtype=torch.float64)], dim=1)
    sigma = x_aug.T @ x_aug / x_aug.shape[0]  # [D+1, D+1]
    del x_aug
    if layout.exact_k_norm:
        # Equal-cache exact form (SPEC §9.4): k_norm stays a module, so only a fitted q_norm needs stage 1.
        fit_src = replace(src_attn, k_norm=None, q_norm=None if layout.exact_q_norm else src_attn.q_norm)
        lin = linearize_qk_norm(fit_src, x_flat, layout.qk_norm)
        U = torch.eye(G, dtype=torch.float64).expand(d // 2, G, G).clone()
        return build_m2la_layer(src_attn, lin, sigma, U, rank, layout.d_n, layout.d_r, layout.d_v,
                                balance=o.balance, with_bias=layout.with_bias, rope_components=exact_rope_components(G, d),
                                exact_q_norm=layout.exact_q_norm, exact_k_norm=True)
    lin = linearize_qk_norm(src_attn, x_flat if arch.qk_norm else None, layout.qk_norm)
    del x_flat
    plane_cov = key_plane_covariance(lin.k, sigma, G, d)
    U = rorope_basis(plane_cov, enabled=o.rorope)
    components = select_rope_components(U, plane_cov, layout.d_r, o.rope_selection,
                                        lin.q.view(-1, d, sigma.shape[0]), sigma, src_attn.group_of_head)
    return build_m2la_layer(src_attn, lin, sigma, U, rank, layout.d_n, layout.d_r, layout.d_v, balance=o.balance,
                            with_bias=layout.with_bias, rope_components=components, exact_q_norm=layout.exact_q_norm)


def write_layer(writer: ShardWriter, reader: TensorReader, arch: SourceArch, i: int, w, dtype: torch.dtype) -> set:
    """Queue layer i's converted attention tensors and its other tensors (norms, MLP) unchanged, in `dtype`.
    Returns the source keys of the layer (all handled)."""
    lp, a = f"{arch.prefix}layers.{i}.", f"{arch.prefix}layers.{i}.self_attn."
    for name, tensor in (("q_proj.weight", w.q_proj_weight), ("q_proj.bias", w.q_proj_bias),
                         ("q_norm.weight", w.q_norm_weight), ("k_norm.weight", w.k_norm_weight),
                         ("kv_a_proj_with_mqa.weight", w.kv_a_weight),
                         ("kv_a_proj_with_mqa.bias", w.kv_a_bias), ("kv_b_proj.weight", w.kv_b_weight),
                         ("o_proj.weight", w.o_proj_weight)):
        if tensor is not None:
            writer.add(a + name, tensor.to(dtype))
    layer_keys = set()
    for key in reader.keys():
        if key.startswith(lp):
            layer_keys.add(key)
            if "rotary_emb" not in key and not any(key.startswith(a + s + ".") for s in ATTENTION_SOURCE_KEYS):
                writer.add(key, reader.get(key).to(dtype))
    return layer_keys


def advance_calibration(arch: SourceArch, reader: TensorReader, i: int, batches: list[CalibrationBatch], xs: list,
                        src_attn: SourceAttention, converted=None) -> float | None:
    """Run the calibration batches through source layer i (its attention on xs, then residual, MLP, DeepStack) so
    they enter layer i + 1. With `converted` (the converted attention, `m2la_attention`), returns its relative
    squared output error against the source attention on each batch's first `measure_rows` rows, else None."""
    lp = f"{arch.prefix}layers.{i}."
    src32 = src_attn.to(torch.float32)
    mlp = source_mlp(reader, lp) if i + 1 < arch.num_layers else None
    post_norm = reader.get(lp + "post_attention_layernorm.weight").float()
    err, ref = 0.0, 0.0
    with torch.no_grad():
        for b, x in zip(batches, xs):
            attn_src = rorope_attention(src32, x, b.cos, b.sin, U=None)
            if converted is not None:
                n = b.measure_rows
                err += float((converted(x[:n], b.cos[:n], b.sin[:n]) - attn_src[:n]).pow(2).sum())
                ref += float(attn_src[:n].pow(2).sum())
            if mlp is not None:
                b.advance(attn_src, post_norm, mlp, arch.rms_norm_eps, i)
    return err / max(ref, 1e-30) if converted is not None else None


def finish_folder(tmp: Path, src: Path, arch: SourceArch, config, layout: TargetLayout, rope_planes: list,
                  tokenizer: Path | None, report: dict) -> None:
    """Everything after the tensors: processor or tokenizer files, the flat remote code, `conversion_report.json`,
    and `config.json` last (a folder without it never loads), then the `INCOMPLETE` note goes."""
    write_processor(src, tmp, arch.is_vl, tokenizer)
    write_remote_code(tmp)
    (tmp / "conversion_report.json").write_text(json.dumps(
        {k: v for k, v in report.items() if k != "config"}, indent=2) + "\n")
    d = arch.head_dim
    text_config = config.text_config if arch.is_vl else config
    text_config.q_norm = layout.exact_q_norm
    text_config.k_norm = layout.exact_k_norm
    if layout.d_r != d or any(planes != list(range(d // 2)) for planes in rope_planes):
        text_config.rope_frequency_planes = rope_planes  # else the released layout: config stays as it was
    text_config.validate_m2la()
    report["config"] = config.to_dict()
    config.save_pretrained(tmp)
    (tmp / "INCOMPLETE").unlink()


def convert(src: str | Path, out: str | Path, options: ConvertOptions | None = None, layer_hook=None) -> dict:
    """Convert `src` into an M²LA folder `out` (atomically). Returns a report: per-layer stats, timings, config.

    The steps: read and check the source (`read_source_arch`, `TensorReader`, `check_source_keys`) and the options
    (`plan_layout`, `check_tokenizer`) before anything is written; calibration inputs of layer 0
    (`calibration_batches`); then per layer, streamed: the method's steps 1-3 (`convert_attention`), its tensors
    queued for the shards (`write_layer`), the calibration batches advanced through the source layer with the
    converted attention's error measured (`advance_calibration`); last the unchanged tensors and the folder's other
    files (`finish_folder`). `layer_hook(i)` (tests) is called after each layer is converted.

    Raises:
        ConversionError: unsupported architecture, impossible ranks or widths, missing files or tensors.
        FileExistsError: `out` exists and `options.overwrite` is False. OutputInUseError (a FileExistsError):
            another live run is writing `out`; nothing of it is touched.
        FileNotFoundError: a calibration file is missing.
    """
    from tqdm.auto import tqdm

    o = options or ConvertOptions()
    src, out = Path(src), Path(out)
    arch = read_source_arch(src)
    reader = TensorReader(src)
    check_source_keys(arch, reader)
    check_output_free(out, o.overwrite)  # atomic_folder holds the output's lock and checks again

    layout = plan_layout(arch, o, reader.parameter_count())
    tokenizer = check_tokenizer(src, arch, o)
    config = build_target_config(arch, layout.ranks, layout.d_n, layout.d_r, layout.d_v, layout.with_bias,
                                 layout.dtype)
    batches = calibration_batches(arch, reader, config, src, o)
    tokens = sum(b.hidden.shape[0] * b.hidden.shape[1] for b in batches)
    layout.qk_norm = resolve_qk_norm(o.qk_norm, tokens, arch.hidden_size)

    report = {"layers": [], "config": config.to_dict(), "src": str(src), "out": str(out), "calibration_tokens": tokens,
              "qk_norm": layout.qk_norm if arch.qk_norm else None, "q_norm": o.q_norm if arch.qk_norm else None,
              "k_norm": ("exact" if layout.exact_k_norm else "fit") if arch.qk_norm else None,
              "exact_form": layout.exact_form,
              "rope_selection": o.rope_selection,
              "calibration_visual_tokens": sum(int(b.visual_mask.sum()) for b in batches if b.visual_mask is not None)}
    start = time.perf_counter()
    try:
        with atomic_folder(out, overwrite=o.overwrite) as tmp:
            (tmp / "INCOMPLETE").write_text(
                f"Interrupted conversion of {src} into {out}: this folder is not a model. Delete it and re-run.\n"
            )
            writer = ShardWriter(tmp, o.max_shard_size)
            layer_keys, rope_planes = set(), []
            for i in tqdm(range(arch.num_layers), desc="converting layers", unit="layer", disable=not o.progress):
                t0 = time.perf_counter()
                src_attn = load_source_attention(arch, reader, i)
                xs = attention_inputs(arch, reader, i, batches)
                w = convert_attention(arch, src_attn, xs, layout.ranks[i], layout, o)
                rope_planes.append(w.rope_planes)
                layer_keys |= write_layer(writer, reader, arch, i, w, layout.dtype)
                stats = dict(w.stats, layer=i)
                converted = m2la_attention(arch, w, layout.ranks[i], layout.d_n, layout.d_v) if o.measure else None
                error = advance_calibration(arch, reader, i, batches, xs, src_attn, converted)
                if error is not None:
                    stats["attn_out_rel_error"] = error
                del w, src_attn, converted, xs
                stats["seconds"] = time.perf_counter() - t0
                report["layers"].append(stats)
                if layer_hook is not None:
                    layer_hook(i)
            del batches
            for key in reader.keys():  # embeddings, final norm, lm_head, vision tower: unchanged
                if key not in layer_keys and "rotary_emb.inv_freq" not in key:
                    writer.add(key, reader.get(key).to(layout.dtype))
            writer.finish()
            finish_folder(tmp, src, arch, config, layout, rope_planes, tokenizer, report)
    except BaseException:
        print(f"conversion interrupted: nothing was written to {out} (no loadable folder exists)", file=sys.stderr)
        raise
    report["seconds"] = time.perf_counter() - start
    return report


def load_m2la(folder: str | Path, dtype=torch.float32):
    """A converted folder loaded the way users load it: `AutoModelForCausalLM` with `trust_remote_code=True`, eval."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=dtype).eval()


# Numeric options: CLI flag -> (ConvertOptions field, type, lowest value, lowest allowed). argparse (`_flag_type`) and
# `check_options` (programmatic use) check the same ranges, so a 0 never turns into a division by zero or a default.
NUMERIC_OPTIONS = {
    "--kv-lora-rank": ("kv_lora_rank", int, 1, True),
    "--cache-values": ("cache_values", int, 2, True),
    "--rope-dim": ("rope_dim", int, 1, True),
    "--qk-nope-dim": ("qk_nope_head_dim", int, 0, True),
    "--v-head-dim": ("v_head_dim", int, 1, True),
    "--calibration-tokens": ("calibration_tokens", int, 1, True),
    "--calibration-seq-len": ("calibration_seq_len", int, 1, True),
    "--video-fps": ("video_fps", float, 0, False),
    "--video-max-frames": ("video_max_frames", int, 1, True),
    "--max-shard-size-gb": ("max_shard_size", float, 0, False),
}


def _range_error(kind: type, low, inclusive: bool, value) -> str | None:
    """None if `value` is a `kind` in range, else why not ("must be an integer >= 1, got '0'")."""
    from configuration_internvideo3 import numeric_range, numeric_range_problem

    if numeric_range_problem(value, kind is int, low, inclusive, strict_types=True):
        return f"must be {numeric_range(kind is int, low, inclusive)}, got {value!r}"
    return None


def _flag_type(flag: str):
    """argparse `type=` for a numeric flag of NUMERIC_OPTIONS."""
    _, kind, low, inclusive = NUMERIC_OPTIONS[flag]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = text
        problem = _range_error(kind, low, inclusive, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _rank_list(text: str) -> list[int]:
    """argparse `type=` for --kv-lora-rank-list: comma-separated integers >= 1."""
    ranks = []
    for item in text.replace(" ", "").split(","):
        try:
            ranks.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1, got {item!r} in {text!r}")
        if ranks[-1] < 1:
            raise argparse.ArgumentTypeError(f"ranks must be >= 1, got {ranks[-1]} in {text!r}")
    return ranks


def _calibration_file(text: str) -> Path:
    """argparse `type=` for --calibration: an existing video file, or a non-empty UTF-8 text file."""
    from .calibration import VIDEO_SUFFIXES

    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"calibration file not found: {path}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return path
    try:
        content = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"{path} is not UTF-8 text (byte {error.start}); pass text files, or videos "
                                         f"with one of the suffixes {sorted(VIDEO_SUFFIXES)}") from None
    if "\x00" in content:
        raise argparse.ArgumentTypeError(f"{path} is not text (it contains NUL bytes)")
    if not content.strip():
        raise argparse.ArgumentTypeError(f"{path} is empty")
    return path


def check_options(o: ConvertOptions) -> None:
    """The ranges of NUMERIC_OPTIONS and the rank list, for programmatic `convert()` calls.

    Raises:
        ConversionError: naming the flag and the value.
    """
    for flag, (name, kind, low, inclusive) in NUMERIC_OPTIONS.items():
        value = getattr(o, name)
        problem = None if value is None and name in ("cache_values", "rope_dim", "qk_nope_head_dim", "v_head_dim") else _range_error(
            kind, low, inclusive, float(value) if kind is float and isinstance(value, int) else value)
        if problem:
            raise ConversionError(f"{flag} ({name}) {problem}")
    if o.kv_lora_rank_list is not None and any(_range_error(int, 1, True, r) for r in o.kv_lora_rank_list):
        raise ConversionError(f"--kv-lora-rank-list ranks must be integers >= 1, got {list(o.kv_lora_rank_list)}")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the flag, never the usage block or a traceback (rule 8)
        self.exit(2, f"error: {message}\n")


def main(argv=None) -> dict:
    parser = _ArgumentParser(prog="internvideo3-convert", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="source transformers checkpoint folder (safetensors)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--kv-lora-rank", type=_flag_type("--kv-lora-rank"), default=896, help="latent width r of every layer (default 896)")
    parser.add_argument("--kv-lora-rank-list", type=_rank_list, default=None, help="comma-separated per-layer ranks (overrides)")
    parser.add_argument("--cache-values", type=_flag_type("--cache-values"), default=None,
                        help="cache width per token and layer, r + d_r, split by the best measured rule (overrides "
                             "--kv-lora-rank; 1024 gives 768 + 256 for Qwen3-VL-8B)")
    parser.add_argument("--rope-dim", type=_flag_type("--rope-dim"), default=None,
                        help="shared RoPE key width d_r, even, up to KV heads x head_dim (default: the source head_dim)")
    parser.add_argument("--rope-selection", choices=ROPE_SELECTIONS, default="qk",
                        help="which rotated key components keep RoPE: by query x key energy (default), key energy, "
                             "or uniformly over frequencies")
    parser.add_argument("--q-norm", choices=Q_NORM_MODES, default="exact",
                        help="Qwen3 q_norm: kept exact as the module q_norm (default) or fitted like k_norm (--qk-norm)")
    parser.add_argument("--k-norm", choices=K_NORM_MODES, default="exact",
                        help="Qwen3 k_norm: kept exact as the module k_norm where every key dim stays rotated "
                             "(--rope-dim = KV heads x head_dim; default), else (and with 'fit') fitted (--qk-norm)")
    parser.add_argument("--qk-nope-dim", type=_flag_type("--qk-nope-dim"), default=None, help="q/k non-RoPE head width (default: the source head_dim)")
    parser.add_argument("--v-head-dim", type=_flag_type("--v-head-dim"), default=None, help="value head width (default: the source head_dim)")
    parser.add_argument("--calibration", nargs="*", type=_calibration_file, default=None,
                        help="text files, and video files for Qwen3-VL sources (default: Python standard-library "
                             "documentation)")
    parser.add_argument("--calibration-tokens", type=_flag_type("--calibration-tokens"), default=2048, help="text calibration tokens (default 2048)")
    parser.add_argument("--calibration-seq-len", type=_flag_type("--calibration-seq-len"), default=512, help="tokens per text row (default 512)")
    parser.add_argument("--video-fps", type=_flag_type("--video-fps"), default=2.0, help="frames sampled per second of calibration video (default 2)")
    parser.add_argument("--video-max-frames", type=_flag_type("--video-max-frames"), default=16, help="frames per calibration video at most (default 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="output dtype (default: the source's)")
    parser.add_argument("--qk-norm", choices=QK_NORM_CHOICES, default="auto",
                        help="k_norm (and a fitted q_norm) of the Qwen3 family: least-squares affine map of the layer "
                             "input (lstsq-input) or of the head (lstsq), mean-scale fold, or weight fold only; auto "
                             f"(default): lstsq-input with at least {INPUT_FIT_TOKENS_PER_DIM} calibration tokens per "
                             "hidden dim, else lstsq")
    parser.add_argument("--no-rorope", action="store_true", help="ablation: keep source KV head 0 as the RoPE key")
    parser.add_argument("--no-balance", action="store_true", help="ablation: no K/V norm balancing")
    parser.add_argument("--max-shard-size-gb", type=_flag_type("--max-shard-size-gb"), default=2.0, help="safetensors shard size (default 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out folder (the old one is deleted only once the new one is in place)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder to calibrate with and ship (default: the source's own; required when the "
                             "source has none; must not have more tokens than the source's vocabulary)")
    parser.add_argument("--no-measure", action="store_true", help="skip the per-layer attention output error")
    args = parser.parse_args(argv)
    options = ConvertOptions(
        kv_lora_rank=args.kv_lora_rank, kv_lora_rank_list=args.kv_lora_rank_list,
        cache_values=args.cache_values, rope_selection=args.rope_selection, q_norm=args.q_norm, k_norm=args.k_norm,
        rope_dim=args.rope_dim, qk_nope_head_dim=args.qk_nope_dim, v_head_dim=args.v_head_dim, dtype=args.dtype,
        calibration=args.calibration, calibration_tokens=args.calibration_tokens,
        calibration_seq_len=args.calibration_seq_len, video_fps=args.video_fps,
        video_max_frames=args.video_max_frames, qk_norm=args.qk_norm, rorope=not args.no_rorope,
        balance=not args.no_balance, max_shard_size=int(args.max_shard_size_gb * 1024**3), overwrite=args.overwrite,
        measure=not args.no_measure, tokenizer=args.tokenizer,
    )
    try:
        report = convert(args.src, args.out, options)
    except (ConversionError, FileExistsError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    for s in report["layers"]:
        extra = f" attn_out_err {s['attn_out_rel_error']:.2e}" if "attn_out_rel_error" in s else ""
        print(f"layer {s['layer']:3d}: rank {s['rank']}/{s['full_rank']} kept energy {s['kept_energy']:.4f} "
              f"K err {s['k_nope_rel_error']:.2e} V err {s['v_rel_error']:.2e} rope-key energy "
              f"{s['rope_key_energy']:.3f}{extra}")
    cfg = report["config"].get("text_config", report["config"])
    print(f"recipe: latent {cfg['kv_lora_rank']} + RoPE key {cfg['qk_rope_head_dim']} values per token and layer, "
          f"RoPE components by {report['rope_selection']}, q_norm {report['q_norm']}, k_norm "
          f"{'exact' if report['k_norm'] == 'exact' else report['qk_norm']}")
    form = report.get("exact_form")
    if form:
        print(f"equal-cache exact form (r = d_r = KV heads x head_dim): {'chosen' if form['chosen'] else 'not chosen'}; "
              f"its q_proj adds {form['extra_query_params']:,} parameters = {100 * form['extra_fraction']:.1f} % of "
              f"the source's (bound {100 * form['bound']:.0f} %)")
    print(f"wrote {args.out} in {report['seconds']:.1f} s")
    return report


def cli() -> None:
    """Console script `internvideo3-convert`: `main` without its return value (a console script exits with what
    its function returns, and the report is not an exit status)."""
    main()


if __name__ == "__main__":
    cli()
