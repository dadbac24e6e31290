"""Shared test fixtures: the repository root on sys.path, real data locations, the small model."""

from __future__ import annotations

import copy
import os
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TOKENIZER_DIR = REPO_ROOT / "assets" / "qwen3_tokenizer"
DEMO_VIDEO = REPO_ROOT / "assets" / "snow_dog.mp4"
# this environment's console scripts (`internvideo3-convert`, ...), also when the venv is not activated
SCRIPTS_DIR = Path(sysconfig.get_path("scripts"))


TEST_VIDEOS_DIR = REPO_ROOT / "tests" / "data" / "videos"


def shared_videos_dir() -> Path:
    """Real test clips: $INTERNVIDEO3_TEST_VIDEOS, else the clips carried in tests/data/videos (README there)."""
    env = os.environ.get("INTERNVIDEO3_TEST_VIDEOS")
    return Path(env) if env else TEST_VIDEOS_DIR


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    path = shared_videos_dir()
    if not path.is_dir():
        pytest.fail(f"real test videos not found at {path} (set INTERNVIDEO3_TEST_VIDEOS)")
    return path


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """The small checkpoint folder, written once per session through the same script users run."""
    from internvideo3.convert.small_checkpoint import build_small_checkpoint

    return build_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "internvideo3-small")


@pytest.fixture(scope="module")
def pristine_model():
    """The small model (random weights, fp32, eval), built once per test module."""
    from internvideo3.convert.small_checkpoint import small_model

    return small_model(seed=0).float().eval()


@pytest.fixture
def model(pristine_model):
    """A copy per test: a test may change its dtype or attention implementation without reaching later tests."""
    return copy.deepcopy(pristine_model)


def remux_faststart(source: Path, target: Path) -> Path:
    """`source` remuxed into mp4 `target` without re-encoding, its index (moov) at the front (`movflags=faststart`):
    a cut copy of it opens and demuxes, as a partial download does. Returns `target`."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:  # the demuxer's flush packets carry no data
                packet.stream = stream
                out.mux(packet)
    return target
