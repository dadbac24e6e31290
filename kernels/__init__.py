"""Latent-attention fast paths for M²LA (SPEC §4, §10).

Installed as `internvideo3.kernels` (setup.py maps this folder; no top-level `kernels` name).
`kernels/latent_attention.py` is self-contained (torch, optional Triton) so the Hub export can copy it flat next to
`modeling_internvideo3.py` as `latent_attention.py` (SPEC §8).
"""
