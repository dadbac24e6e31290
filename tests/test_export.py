"""Hub export: a flat, self-describing folder that loads in a fresh process (card snippets: test_card_snippets.py)."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO_VIDEO
from test_checkpoint import LOAD_AND_GENERATE, run_isolated

from internvideo3.convert.export import export_for_hub


@pytest.fixture(scope="module")
def exported(small_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "InternVideo3-small-export"
    return export_for_hub(small_checkpoint, out, video_example=str(DEMO_VIDEO))


def test_export_folder_contents(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "latent_attention.py", "modeling_internvideo3.py",
            "configuration_internvideo3.py", "processing_internvideo3.py", "tokenizer.json"} <= names
    assert not [p for p in exported.parent.iterdir() if ".incomplete-" in p.name], "temporary folder left behind"
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_internvideo3.InternVideo3Config"
    processor_configs = [p for p in exported.glob("*.json") if "processor" in p.name]
    assert processor_configs and all(
        json.loads(p.read_text())["auto_map"]["AutoProcessor"] == "processing_internvideo3.InternVideo3Processor"
        for p in processor_configs
    )


def test_export_refuses_to_overwrite_and_rejects_non_checkpoints(exported, tmp_path):
    with pytest.raises(FileExistsError):
        export_for_hub(exported, exported)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_for_hub(tmp_path, tmp_path / "out")


def test_exported_folder_generates_on_real_video_in_fresh_process(exported, tmp_path):
    result = run_isolated(LOAD_AND_GENERATE, str(exported), str(DEMO_VIDEO), cwd=tmp_path)
    assert result["cache"] == "InternVideo3LatentCache" and result["new_tokens"] == 4
    assert result["kernel_module"].startswith("transformers_modules"), "the flattened kernel must be the one used"


