"""Checkpoint tools: GQA/MHA -> M²LA conversion, small test checkpoints and Hub export (SPEC §8, §9).

Run from the repository root (`python -m convert.<module>`); the modules import the flat remote-code files
(`modeling_internvideo3.py`, ...) from there.
"""
