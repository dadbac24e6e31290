"""Checkpoint tools: GQA/MHA -> M²LA conversion, small test checkpoints and Hub export (SPEC §8, §9).

Installed as `internvideo3.convert` (setup.py maps this folder), with console scripts `internvideo3-convert`,
`internvideo3-export` and `internvideo3-small-checkpoint` that run from any directory; in a checkout
`python -m convert.<module>` runs the same code from the repository root. The modules import each other relatively
and the flat remote-code files (`modeling_internvideo3.py`, ...) as the installed top-level modules.
"""
