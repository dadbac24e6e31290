"""Calibration text for the converter and the quality bench: user files, or real English text that ships with Python.

The default corpus is the documentation strings of standard-library modules (written by people, stable across
machines, no download). `calibration_token_ids` tokenizes it with the source's tokenizer (or the Qwen3 tokenizer in
`assets/qwen3_tokenizer/`) into a [B, S] batch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from pathlib import Path

import torch

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".gif"}

# Standard-library modules with long, well-written documentation (pure Python, always importable).
STDLIB_MODULES = (
    "argparse", "collections", "functools", "itertools", "pathlib", "typing", "dataclasses", "inspect", "logging",
    "subprocess", "threading", "asyncio", "json", "csv", "email", "http.client", "urllib.request", "unittest",
    "doctest", "pydoc", "decimal", "fractions", "random", "statistics", "datetime", "calendar", "textwrap",
    "difflib", "string", "re", "shutil", "tempfile", "zipfile", "tarfile", "configparser", "contextlib", "abc",
    "enum", "heapq", "bisect", "pickle", "copy", "pprint", "socket", "selectors", "ssl", "smtplib", "imaplib",
    "ftplib", "xml.dom.minidom", "xml.etree.ElementTree", "html.parser", "sqlite3", "gettext", "locale",
    "optparse", "getopt", "cmd", "shlex", "trace", "timeit", "cProfile", "profile", "pdb", "codecs", "io", "os",
    "operator", "weakref", "types", "numbers", "math", "tokenize", "ast", "dis", "zipimport", "importlib",
    "multiprocessing", "concurrent.futures", "queue", "sched", "mailbox", "mimetypes", "base64", "hashlib",
    "hmac", "secrets", "uuid", "ipaddress", "wave", "colorsys", "turtle", "tkinter", "venv", "warnings",
)


@functools.lru_cache(maxsize=4)
def stdlib_docstrings(modules=STDLIB_MODULES) -> tuple[str, ...]:
    """One document per module: its docstring followed by its public classes' and functions' docstrings (about
    800,000 characters, 187,000 Qwen3 tokens)."""
    documents = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception:  # e.g. tkinter without Tk: skip
            continue
        parts = [inspect.getdoc(module) or ""]
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                doc = inspect.getdoc(value)
                if doc:
                    parts.append(f"{attr}: {doc}")
                if inspect.isclass(value):
                    for meth, member in sorted(vars(value).items()):
                        if not meth.startswith("_") and inspect.isfunction(member) and inspect.getdoc(member):
                            parts.append(f"{attr}.{meth}: {inspect.getdoc(member)}")
        text = "\n\n".join(p for p in parts if p.strip())
        if len(text) > 200:
            documents.append(text)
    return tuple(documents)


def read_calibration_files(paths) -> tuple[list[str], list[Path]]:
    """Split calibration files into (text documents, video paths) by suffix (videos: VIDEO_SUFFIXES).

    Raises:
        FileNotFoundError: a file does not exist (its path is named).
    """
    documents, videos = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        if path.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(path)
        else:
            documents.append(path.read_text(encoding="utf-8", errors="replace"))
    return documents, videos


def load_tokenizer(src: str | Path | None):
    """The source folder's tokenizer if it has one, else the real Qwen3 tokenizer shipped in assets/."""
    from transformers import AutoTokenizer

    if src is not None and any((Path(src) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        try:
            return AutoTokenizer.from_pretrained(str(src))
        except Exception as error:  # noqa: BLE001 - fall back to the shipped tokenizer, but say so
            warnings.warn(f"could not load the tokenizer of {src} ({error}); using the shipped Qwen3 tokenizer")
    return _shipped_tokenizer()


def train_tokenizer(documents, vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` of `vocab_size` tokens trained on `documents` with the `tokenizers`
    library (EOS and pad `<|endoftext|>`): a real tokenizer that fits a small model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer)
    # a causal LM's inputs: no token_type_ids (transformers 4.57's generate() rejects them for decoder-only models)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"])


def byte_tokenizer():
    """A byte-level `PreTrainedTokenizerFast` with no merges: ids 0-255 are the bytes themselves (the `tokenizers`
    ByteLevel alphabet, GPT-2's byte-to-character map) and 256 is `<|endoftext|>` (EOS and pad), 257 tokens in all.
    No training: any text round-trips, and a folder saved with it is a complete checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"])


def python_reference_topics() -> tuple[str, ...]:
    """One document per topic of the Python language reference that ships with the interpreter (`pydoc_data.topics`,
    the text of `help("if")` etc.: 79 topics, about 465,000 characters of English prose with code examples), sorted
    by topic name. Different text from `stdlib_docstrings` (the reference manual, not module docstrings)."""
    from pydoc_data.topics import topics

    return tuple(topics[name] for name in sorted(topics) if len(topics[name]) > 200)


@functools.lru_cache(maxsize=1)
def _shipped_tokenizer():
    from transformers import AutoTokenizer

    from .export import TOKENIZER_DIR

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def calibration_token_ids(documents: list[str], tokenizer, vocab_size: int, num_tokens: int, seq_len: int) -> torch.Tensor:
    """Concatenate the tokenized documents (EOS between them) and cut [ceil(num_tokens / seq_len), seq_len] ids.

    Ids outside the model's vocabulary (a small test model) are folded modulo `vocab_size`, with a warning. Text
    shorter than needed is repeated.
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows = max(1, -(-num_tokens // seq_len))
    need = rows * seq_len
    stream: list[int] = []
    for doc in documents:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if len(stream) >= need:
            break
    if len(stream) <= len(documents) and not any(d.strip() for d in documents):
        raise ValueError("the calibration text is empty")
    while len(stream) < need:
        stream = stream + stream
    ids = torch.tensor(stream[:need], dtype=torch.long).view(rows, seq_len)
    if int(ids.max()) >= vocab_size:
        warnings.warn(f"calibration token ids reach {int(ids.max())} >= vocab_size {vocab_size}: folded modulo vocab")
        ids = ids % vocab_size
    return ids
