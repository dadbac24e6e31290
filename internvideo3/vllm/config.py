"""How vLLM reads our config: M²LA is MLA (SPEC §3-§4), so the KV cache holds kv_lora_rank + qk_rope_head_dim values
per token and layer.

vLLM decides `use_mla` from a hard-coded `model_type` list (`transformers_utils/model_arch_config_convertor.py`,
`is_deepseek_mla`) and looks a convertor up by `hf_config.model_type` (`config/model.py`); the base convertor's
`_get_qk_rope_head_dim` re-reads config.json when qk_rope_head_dim == qk_nope_head_dim (ours: 128/128), which is
right for our config already.
"""

from __future__ import annotations


def register_config_convertor() -> None:
    from vllm.transformers_utils.model_arch_config_convertor import (
        MODEL_ARCH_CONFIG_CONVERTORS,
        ModelArchConfigConvertorBase,
    )

    class InternVideo3ModelArchConfigConvertor(ModelArchConfigConvertorBase):
        def is_deepseek_mla(self) -> bool:
            return getattr(self.hf_text_config, "kv_lora_rank", None) is not None

        def _get_qk_rope_head_dim(self) -> int:
            return int(self.hf_text_config.qk_rope_head_dim)

    for model_type in ("internvideo3", "internvideo3_text"):  # the video model; converted text-only models
        MODEL_ARCH_CONFIG_CONVERTORS.setdefault(model_type, InternVideo3ModelArchConfigConvertor)
