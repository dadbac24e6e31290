"""Write Hub-ready InternVideo3 folders: weights, config with `auto_map`, processor, and the flat remote code.

Only flat sibling `.py` files travel with `trust_remote_code` (SPEC §8), so `kernels/latent_attention.py` is copied
next to `modeling_internvideo3.py` as `latent_attention.py`. Folders are written to a temporary sibling and renamed
only when complete, so an interrupted run never leaves a folder that loads (DEVELOPERS rule 7).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

# The folder holding `convert/` and its siblings `kernels/` and `assets/`: the repository root in a checkout,
# `site-packages/internvideo3` once installed (setup.py installs the folders as `internvideo3.convert`, `.kernels`,
# `.assets`), so one relative path finds them in both layouts.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path:
    """The file of top-level module `name` (a flat remote-code module), found without importing it.

    Raises:
        ModuleNotFoundError: neither installed (`pip install .`) nor in the current directory.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{name} is not importable: install the package (pip install -e .)")
    return Path(spec.origin)


# destination name in the exported folder -> source file (the installed remote-code modules, the kernel beside convert/)
REMOTE_CODE_FILES = {
    "configuration_internvideo3.py": _module_file("configuration_internvideo3"),
    "modeling_internvideo3.py": _module_file("modeling_internvideo3"),
    "processing_internvideo3.py": _module_file("processing_internvideo3"),
    "image_processing_internvideo3.py": _module_file("image_processing_internvideo3"),
    "video_processing_internvideo3.py": _module_file("video_processing_internvideo3"),
    "video_decoding_internvideo3.py": _module_file("video_decoding_internvideo3"),
    "video_frames_internvideo3.py": _module_file("video_frames_internvideo3"),
    "vision_settings_internvideo3.py": _module_file("vision_settings_internvideo3"),
    "latent_attention.py": PACKAGE_ROOT / "kernels" / "latent_attention.py",
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
# the processor's parts (issue 24): each saved config names its own class and the processor
PART_AUTO_MAPS = {
    "preprocessor_config.json": {"AutoImageProcessor": "image_processing_internvideo3.InternVideo3ImageProcessor"},
    "video_preprocessor_config.json": {"AutoVideoProcessor": "video_processing_internvideo3.InternVideo3VideoProcessor"},
}
TOKENIZER_DIR = PACKAGE_ROOT / "assets" / "qwen3_tokenizer"


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


class OutputInUseError(FileExistsError):
    """Another live run is writing the same output folder (it holds `.<out>.lock`); nothing was touched."""


def output_lock(out: str | os.PathLike):
    """The inter-process lock of output folder `out`: `filelock.FileLock` on `.<out>.lock` beside it (an OS lock the
    kernel releases when its process dies, so a killed run never leaves it held). The empty lock file stays after a
    run: deleting it on release would let two later runs lock two different files."""
    from filelock import FileLock

    out = Path(out)
    return FileLock(str(out.parent / f".{out.name}.lock"))


def check_output_free(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail fast, before hours of work, when `out` cannot be written: it exists without `overwrite`, or another live
    run holds its lock. `atomic_folder` checks both again under the lock.

    Raises:
        FileExistsError, OutputInUseError.
    """
    from filelock import Timeout

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    lock = output_lock(out)
    if not os.path.exists(lock.lock_file):  # never held: and a run that fails later leaves no lock file behind
        return
    try:
        with lock.acquire(timeout=0):
            pass
    except Timeout:
        raise OutputInUseError(_in_use(out)) from None


def _in_use(out: Path) -> str:
    return (f"{out} is being written by another run right now (it holds {out.parent / ('.' + out.name + '.lock')}); "
            f"wait for it to finish or choose another output folder")


def recover_leftovers(out: Path) -> list[str]:
    """With `out`'s lock held (so no live run owns them): remove `.<out>.incomplete-*` folders of interrupted runs,
    and put back a `.<out>.replaced-*` folder if an `overwrite` run stopped after moving the old `out` aside but
    before its new folder was in place (else remove it). Returns one line per action."""
    done = []
    for stale in sorted(out.parent.glob(f".{out.name}.incomplete-*")):
        shutil.rmtree(stale, ignore_errors=True)
        done.append(f"removed {stale}: the leftover of an interrupted run (never loadable)")
    for old in sorted(out.parent.glob(f".{out.name}.replaced-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not out.exists():
            os.replace(old, out)
            done.append(f"restored {out} from {old}: an overwriting run stopped before its new folder was in place")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old}: the previous {out.name}, already replaced")
    return done


@contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to `out`; rename it to `out` only if the block finishes.

    The whole block holds `out`'s inter-process lock (`output_lock`): a second run into the same `out` fails at once
    with `OutputInUseError` instead of touching this one's files, and leftovers of dead runs are cleaned only under
    the lock (`recover_leftovers`). With `overwrite`, the old `out` is renamed aside, the new folder renamed in, and
    only then the old one deleted: at every instant one complete folder exists (a crash in between is repaired by the
    next run).

    Raises:
        FileExistsError: `out` exists and `overwrite` is False. OutputInUseError: another live run writes `out`.
    """
    from filelock import Timeout

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = output_lock(out)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputInUseError(_in_use(out)) from None
    try:
        for line in recover_leftovers(out):
            print(line, file=sys.stderr)
        if out.exists() and not overwrite:  # a restored folder, or one written while this run was calibrating
            raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{tmp.name.rsplit('-', 1)[-1]}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        lock.release()


def load_processor(tokenizer_dir: str | os.PathLike = TOKENIZER_DIR, **processor_kwargs):
    """An `InternVideo3Processor` around the real Qwen3 tokenizer shipped in `assets/qwen3_tokenizer/`."""
    from transformers import AutoTokenizer

    from processing_internvideo3 import InternVideo3Processor

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return InternVideo3Processor(tokenizer=tokenizer, **processor_kwargs)


def portable_tokenizer_config(folder: str | os.PathLike) -> None:
    """Rewrite `folder/tokenizer_config.json` (if any) so every supported transformers reads it (SPEC §8).

    transformers 5.x saves the special-token list as `extra_special_tokens: [...]`, which 4.57 reads as a
    {name: token} dict and fails on (`'list' object has no attribute 'keys'`), and leaks the loading flags `is_local`
    and `local_files_only` into the file. The list goes back under `additional_special_tokens`, which both lines read
    as the same list; the flags are dropped. Written through a temporary file and renamed.
    """
    import json

    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    extra = data.get("extra_special_tokens")
    if isinstance(extra, list):
        del data["extra_special_tokens"]
        data["additional_special_tokens"] = list(dict.fromkeys([*data.get("additional_special_tokens", []), *extra]))
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model_folder(model, processor, out: str | os.PathLike, overwrite: bool = False, max_shard_size="5GB") -> Path:
    """Save `model` (safetensors, sharded with an index above `max_shard_size`), `processor` and the remote code
    into `out`, atomically. Returns `out` as a Path."""
    set_auto_map(model.config)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(tmp)
            portable_tokenizer_config(tmp)
        write_remote_code(tmp)
    return Path(out)


MODEL_CARD = """---
library_name: transformers
pipeline_tag: video-text-to-text
license: apache-2.0
tags: [video, multimodal, mla, m2la, long-context, custom_code]
---

# {name}

InternVideo3 (arXiv 2606.12195): Qwen3-VL-8B with its attention converted to M²LA (multimodal multi-head latent
attention). The KV cache holds one {rank}-dim latent plus one shared {rope}-dim RoPE key per token and layer
({values:,} values/token over {layers} layers), and decoding attends over the latent directly (weight absorption).

Needs `transformers>=4.57.3` (4.57.3 and 5.x tested), `torch`, and `av` (PyAV) for video decoding; no torchvision,
torchcodec, decord or system FFmpeg.

```bash
pip install "transformers>=4.57.3" torch av accelerate
```

## Text

```python
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

path = "{repo_id}"
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "text", "text": "Give me a short introduction to long-video understanding."}}]}}]
inputs = processor.apply_chat_template(
    messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
).to(model.device)
out = model.generate(**inputs, max_new_tokens=64)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

## Video

```python
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

path = "{repo_id}"
video_path = "{video}"
fps, max_frames = 2.0, 256          # frames sampled per second, and at most this many frames
max_pixels = 256 * 32 * 32          # pixels per frame after resizing (about 256 visual tokens per frame group)

model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
messages = [{{"role": "user", "content": [
    {{"type": "video", "video": video_path, "fps": fps, "max_frames": max_frames, "max_pixels": max_pixels}},
    {{"type": "text", "text": "What is the main activity in the video?"}},
]}}]
inputs = processor.apply_chat_template(
    messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
).to(model.device)
out = model.generate(**inputs, max_new_tokens=128)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```
"""

_COPIED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken")


def export_for_hub(
    src: str | os.PathLike,
    out: str | os.PathLike,
    repo_id: str | None = None,
    video_example: str = "my_clip.mp4",
    overwrite: bool = False,
) -> Path:
    """Write a Hub-ready folder from checkpoint folder `src`: weights and tokenizer/processor files copied as they
    are, `auto_map` set in `config.json` and in the processor configs, the flat remote code, and a model card whose
    snippets load `repo_id` (the snippets are tested against a local export). Written atomically.

    Raises:
        FileNotFoundError: `src` has no config.json. FileExistsError: `out` exists and not `overwrite`.
    """
    import json

    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: not a checkpoint folder")
    with atomic_folder(out, overwrite=overwrite) as tmp:
        for path in sorted(src.iterdir()):
            if path.is_file() and path.name.endswith(_COPIED_SUFFIXES) and path.name != "README.md":
                shutil.copyfile(path, tmp / path.name)
        config = json.loads((tmp / "config.json").read_text())
        text = config.get("text_config", config)
        multimodal = config.get("model_type") != "internvideo3_text"
        config["auto_map"] = dict(MULTIMODAL_AUTO_MAP if multimodal else TEXT_AUTO_MAP)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                     "tokenizer_config.json"):
            path = tmp / name
            if path.is_file():
                data = json.loads(path.read_text())
                data.setdefault("auto_map", {}).update({**PROCESSOR_AUTO_MAP, **PART_AUTO_MAPS.get(name, {})})
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        portable_tokenizer_config(tmp)
        write_remote_code(tmp)
        layers = text.get("num_hidden_layers", 36)
        rank, rope = text.get("kv_lora_rank", 896), text.get("qk_rope_head_dim", 128)
        (tmp / "README.md").write_text(
            MODEL_CARD.format(
                name=repo_id or Path(out).name, repo_id=repo_id or str(Path(out)), video=video_example,
                rank=rank, rope=rope, layers=layers, values=layers * (rank + rope),
            )
        )
    return Path(out)


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an exported folder with huggingface_hub (`create_repo` + `upload_folder`). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload InternVideo3"))


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="internvideo3-export",
                                     description="Export an InternVideo3 checkpoint folder for the Hub")
    parser.add_argument("--src", required=True, help="checkpoint folder (e.g. written by internvideo3-convert)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--repo-id", help="Hub repo id used in the model card (and pushed to with --push)")
    parser.add_argument("--push", action="store_true", help="upload the folder to --repo-id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    folder = export_for_hub(args.src, args.out, repo_id=args.repo_id, overwrite=args.overwrite)
    print(f"exported {folder}")
    if args.push:
        if not args.repo_id:
            parser.error("--push needs --repo-id")
        print(push_folder(folder, args.repo_id, private=args.private))


if __name__ == "__main__":
    main()
