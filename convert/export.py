"""Write Hub-ready InternVideo3 folders: weights, config with `auto_map`, processor, and the flat remote code.

Only flat sibling `.py` files travel with `trust_remote_code` (SPEC §8), so `kernels/latent_attention.py` is copied
next to `modeling_internvideo3.py` as `latent_attention.py`. Folders are written to a temporary sibling and renamed
only when complete, so an interrupted run never leaves a folder that loads (DEVELOPERS rule 7).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# destination name in the exported folder -> source file in this repository
REMOTE_CODE_FILES = {
    "configuration_internvideo3.py": REPO_ROOT / "configuration_internvideo3.py",
    "modeling_internvideo3.py": REPO_ROOT / "modeling_internvideo3.py",
    "processing_internvideo3.py": REPO_ROOT / "processing_internvideo3.py",
    "latent_attention.py": REPO_ROOT / "kernels" / "latent_attention.py",
}

MULTIMODAL_AUTO_MAP = {
    "AutoConfig": "configuration_internvideo3.InternVideo3Config",
    "AutoModel": "modeling_internvideo3.InternVideo3Model",
    "AutoModelForCausalLM": "modeling_internvideo3.InternVideo3ForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_internvideo3.InternVideo3ForConditionalGeneration",
}
TEXT_AUTO_MAP = {
    "AutoConfig": "configuration_internvideo3.InternVideo3TextConfig",
    "AutoModel": "modeling_internvideo3.InternVideo3TextModel",
    "AutoModelForCausalLM": "modeling_internvideo3.InternVideo3TextForCausalLM",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_internvideo3.InternVideo3Processor"}
TOKENIZER_DIR = REPO_ROOT / "assets" / "qwen3_tokenizer"


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Copy the flat remote-code files into `folder`. Returns the written file names."""
    for name, source in REMOTE_CODE_FILES.items():
        shutil.copyfile(source, Path(folder) / name)
    return sorted(REMOTE_CODE_FILES)


def set_auto_map(config) -> None:
    """Point `config.auto_map` at the flat remote-code classes (multimodal or text-only, by `model_type`)."""
    config.auto_map = dict(TEXT_AUTO_MAP if config.model_type == "internvideo3_text" else MULTIMODAL_AUTO_MAP)
    if config.model_type == "internvideo3_text":
        config.architectures = ["InternVideo3TextForCausalLM"]
    else:
        config.architectures = ["InternVideo3ForConditionalGeneration"]


@contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to `out`; rename it to `out` only if the block finishes.

    Raises:
        FileExistsError: `out` exists and `overwrite` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def load_processor(tokenizer_dir: str | os.PathLike = TOKENIZER_DIR, **processor_kwargs):
    """An `InternVideo3Processor` around the real Qwen3 tokenizer shipped in `assets/qwen3_tokenizer/`."""
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    from transformers import AutoTokenizer

    from processing_internvideo3 import InternVideo3Processor

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return InternVideo3Processor(tokenizer=tokenizer, **processor_kwargs)


def save_model_folder(model, processor, out: str | os.PathLike, overwrite: bool = False, max_shard_size="5GB") -> Path:
    """Save `model` (safetensors, sharded with an index above `max_shard_size`), `processor` and the remote code
    into `out`, atomically. Returns `out` as a Path."""
    set_auto_map(model.config)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(tmp)
        write_remote_code(tmp)
    return Path(out)
