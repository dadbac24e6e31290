"""The chat template as transformers keeps it (issue 24, item 2): `chat_template.jinja` in every folder we write
(small checkpoint and export: `save_model_folder`; converter: `write_processor`), the only copy there, and what
`AutoProcessor.from_pretrained` loads on every supported transformers (its own loader, not our Python default)."""

from __future__ import annotations

import json
import shutil

from transformers import AutoProcessor

from tests.conftest import REPO_ROOT, TOKENIZER_DIR

CHAT_TEMPLATE = (REPO_ROOT / "assets" / "chat_template.jinja").read_text(encoding="utf-8")


def assert_one_template_file(folder) -> None:
    assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE
    for name in ("tokenizer_config.json", "processor_config.json", "chat_template.json"):
        path = folder / name
        if path.is_file():
            assert "chat_template" not in json.loads(path.read_text(encoding="utf-8")), name


def test_every_folder_we_write_has_the_chat_template_file(small_checkpoint, tmp_path):
    from internvideo3.convert.gqa_to_m2la import write_processor

    assert_one_template_file(small_checkpoint)  # build_small_checkpoint -> export.save_model_folder
    source, converted = tmp_path / "source", tmp_path / "converted"
    source.mkdir()
    converted.mkdir()
    write_processor(source, converted, is_vl=True, tokenizer=TOKENIZER_DIR)  # the converter's processor files
    assert_one_template_file(converted)


def test_the_folder_template_file_is_what_loads(small_checkpoint, tmp_path):
    """An edited chat_template.jinja changes what the loaded processor renders: transformers reads the file and
    passes it to the remote-code processor, whose Python default is not used."""
    folder = tmp_path / "edited"
    shutil.copytree(small_checkpoint, folder)
    edited = CHAT_TEMPLATE + '{{- "<edited>" }}'
    (folder / "chat_template.jinja").write_text(edited, encoding="utf-8")
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    assert processor.chat_template == edited
    rendered = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert rendered.endswith("<edited>")
    loaded = AutoProcessor.from_pretrained(str(small_checkpoint), trust_remote_code=True)
    assert loaded.chat_template == CHAT_TEMPLATE
