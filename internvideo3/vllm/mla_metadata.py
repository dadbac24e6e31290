"""vLLM's MLA attention metadata without its head-size list, shared by the plugin's CPU and CUDA backends.

`MLACommonMetadata.__post_init__` (vllm/model_executor/layers/attention/mla_attention.py) raises "Head dimension N
is not supported by MLA" unless `head_dim` (the model's `get_head_size()`, r + d_r for MLA) is 320, 512 or 576:
DeepSeek's widths. Ours is 896 + 128 = 1024 at the 8B layout (48 in the small checkpoint). The metadata carries the
number only; the kernels that read the cache take any width (vLLM's Triton MLA decode, our CPU decode).
"""

from __future__ import annotations

import dataclasses

from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadata


@dataclasses.dataclass
class LatentMLAMetadata(MLACommonMetadata):
    def __post_init__(self):  # the parent's check lists DeepSeek's head sizes only; the backends take any
        pass
