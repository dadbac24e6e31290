"""examples/quickstart.ipynb runs top to bottom (issue 17): executed with nbclient on the small checkpoint, it shows
the sampled-frame strip and the KV-cache plot as images and prints the visual-token count and `video_grid_thw`."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


def test_quickstart_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_notebook_runs_and_shows_frames_and_cache_plot(small_checkpoint, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # reuse the session's small checkpoint instead of building one into the repository
    monkeypatch.setenv("INTERNVIDEO3_SMALL_CHECKPOINT", str(small_checkpoint))
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    code = [c for c in notebook.cells if c.cell_type == "code"]
    strip = next(c for c in code if "load_video" in c.source)
    plot = next(c for c in code if "gqa_cache_values_per_token" in c.source)
    assert _has_image(strip), "the sampled-frame strip is not an image output"
    assert _has_image(plot), "the KV-cache plot is not an image output"
    printed = _text(strip)
    assert "visual tokens:" in printed and "video_grid_thw: [[" in printed
    streamed = next(c for c in code if "TextStreamer" in c.source)
    assert _text(streamed).strip(), "the streamer printed no tokens"
    rows = [line for line in _text(plot).splitlines() if "bytes measured" in line]
    assert len(rows) == 4
    # the small model's latent cache is smaller than its GQA cache at every length
    assert all(float(line.rsplit("(", 1)[1].rstrip(")")) < 1.0 for line in rows)
    agent = next(c for c in code if "VideoAgent(" in c.source)
    assert "answer:" in _text(agent) and "prefill tokens saved:" in _text(agent)
    training = next(c for c in code if "train_sft.py" in c.source)
    assert _text(training).startswith("train_loss: first ")
