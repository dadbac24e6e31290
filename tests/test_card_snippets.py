"""The model card's own snippets work as users copy them (issue 4 item 5; SPEC §14).

The card is the README.md that `internvideo3.convert.export.export_for_hub` writes for a Hub repo id. Each snippet is taken from
it, only its `path = "..."` (and the video snippet's `video_path = "..."`) line is pointed at a local export of the
small checkpoint and a real clip, and it runs in a fresh interpreter in which the repository is not importable, on
the transformers version of the running environment. Before running, every name a snippet uses must be defined in
it (the released card used `max_frames` and `images` without defining them), and the video item must carry its
sampling and pixel budgets; after running, the prompt must honour those budgets.
"""

from __future__ import annotations

import ast
import builtins
import math
import re

import pytest
from conftest import DEMO_VIDEO
from test_checkpoint import run_isolated

from internvideo3.convert.export import export_for_hub

HUB_ID = "OpenGVLab/InternVideo3-8B-Instruct"
REPORT = """
import json
report = {"new_tokens": int(out.shape[1] - inputs["input_ids"].shape[1]), "answer_type": type(processor.batch_decode(
    out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]).__name__, "dtype": str(model.dtype)}
if "video_grid_thw" in inputs:
    report.update(video_grid_thw=inputs["video_grid_thw"].tolist(), fps=fps, max_frames=max_frames,
                  max_pixels=max_pixels, video_tokens=int((inputs["input_ids"] == model.config.video_token_id).sum()))
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def card(small_checkpoint, tmp_path_factory) -> tuple[str, str]:
    """(README.md written for the Hub id, local folder exported from the same checkpoint)."""
    folder = export_for_hub(small_checkpoint, tmp_path_factory.mktemp("card") / "InternVideo3-small", repo_id=HUB_ID)
    return (folder / "README.md").read_text(), str(folder)


def snippet(card_text: str, section: str) -> str:
    match = re.search(rf"^## {section}\n\n```python\n(.*?)^```", card_text, re.S | re.M)
    assert match, f"the model card has no python snippet under '## {section}'"
    return match.group(1)


def undefined_names(code: str) -> set[str]:
    """Names read by `code` that it never imports or assigns and that are not builtins."""
    tree = ast.parse(code)
    defined, used = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return used - defined


def video_item_keys(code: str) -> set[str]:
    """Keys of the `{"type": "video", ...}` message item in `code`."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Dict):
            items = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
            if isinstance(items.get("type"), ast.Constant) and items["type"].value == "video":
                return set(items)
    return set()


def localized(code: str, **assignments: str) -> str:
    """`code` with each `name = "..."` line assigned the given value instead; each line must exist exactly once."""
    for name, value in assignments.items():
        code, count = re.subn(rf'^{name} = "[^"\n]*"$', f"{name} = {value!r}", code, flags=re.M)
        assert count == 1, f"the snippet must assign {name} = \"...\" exactly once on its own line"
    return code


@pytest.mark.parametrize("section", ["Text", "Video"])
def test_snippet_defines_every_name_it_uses(card, section):
    code = snippet(card[0], section)
    assert f'path = "{HUB_ID}"' in code
    assert undefined_names(code) == set()


def test_video_snippet_sets_sampling_and_pixel_budgets(card):
    keys = video_item_keys(snippet(card[0], "Video"))
    assert {"video", "fps", "max_frames"} <= keys
    assert keys & {"max_pixels", "total_pixels"}, "the video item must bound the pixels per frame or per clip"


def test_text_snippet_runs_verbatim(card, tmp_path):
    card_text, folder = card
    result = run_isolated(localized(snippet(card_text, "Text"), path=folder) + REPORT, cwd=tmp_path)
    assert result["new_tokens"] > 0 and result["answer_type"] == "str"
    assert result["dtype"] == "torch.float32", 'dtype="auto" must keep the checkpoint dtype'


def test_video_snippet_runs_verbatim_within_its_budgets(card, tmp_path):
    """Demo clip: 8 s at 5 fps (40 frames), 640x480."""
    card_text, folder = card
    code = localized(snippet(card_text, "Video"), path=folder, video_path=str(DEMO_VIDEO)) + REPORT
    result = run_isolated(code, cwd=tmp_path)
    assert result["new_tokens"] > 0 and result["answer_type"] == "str"
    frames = min(max(int(40 / 5 * result["fps"]), 4), result["max_frames"], 40)
    (t, h, w), = result["video_grid_thw"]
    assert t == math.ceil(frames / 2)
    assert (h * 16) * (w * 16) <= result["max_pixels"]
    assert result["video_tokens"] == t * h * w // 4
