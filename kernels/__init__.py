"""Latent-attention fast paths for M²LA (SPEC §4, §10).

Installed as `internvideo3.kernels` (setup.py maps this folder; no top-level `kernels` name).
`kernels/latent_attention.py` is self-contained (torch, optional Triton) so the Hub export can copy it flat next to
`modeling_internvideo3.py` as `latent_attention.py` (SPEC §8).

The top-level name `kernels` belongs to the Hub kernels package on PyPI, which transformers >= 5.25 imports (it is
one of its dependencies). From a checkout whose root is on sys.path (`python -m pytest`, `python -m convert...` run
there) this folder would be found first under that name and hide it, so imported as `kernels` it loads the installed
package in its own place when there is one.
"""

if __name__ == "kernels":
    import importlib.util
    import sys
    from importlib.machinery import PathFinder
    from pathlib import Path

    _checkout = Path(__file__).resolve().parents[1]
    _elsewhere = [entry for entry in sys.path if Path(entry or ".").resolve() != _checkout]
    _spec = PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None:  # without one this stays a folder with no version, which transformers treats as absent
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
