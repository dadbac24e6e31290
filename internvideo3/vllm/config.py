"""How vLLM reads our config: M²LA is MLA (SPEC §3-§4), so the KV cache holds kv_lora_rank + qk_rope_head_dim values
per token and layer.

vLLM decides `use_mla` from a hard-coded `model_type` list (`transformers_utils/model_arch_config_convertor.py`,
`is_deepseek_mla`) and looks a convertor up by `hf_config.model_type` (`config/model.py`); the base convertor's
`_get_qk_rope_head_dim` re-reads config.json when qk_rope_head_dim == qk_nope_head_dim (ours: 128/128), which is
right for our config already.

On CPU vLLM picks the MLA backend by the host, not the model: `AMX_MLA` wherever the CPU has AMX tiles (Intel Xeon
since Sapphire Rapids; `platforms/cpu.py` `get_attn_backend_cls`), whose kernels take kv_lora_rank + qk_rope_head_dim
= 512 + 64 only and bf16 only. So our models ask for `CPU_MLA` (the plugin's latent backend, any width) through
vLLM's per-architecture config hook, which runs before the platform reads the choice.
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


def register_architecture_config(architectures) -> None:
    """Add our `architectures` to vLLM's `MODELS_CONFIG_MAP` (called from `VllmConfig.__post_init__`, before
    `current_platform.check_and_update_config`). On CPU an unset attention backend becomes `CPU_MLA`; an explicit
    `AMX_MLA` for a latent width it does not support (its `get_supported_head_sizes()`: 576) raises ValueError naming
    `--attention-backend`, instead of the AMX weight packer's "invalid weight input features" at load. Other
    platforms: unchanged."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    class InternVideo3VllmConfig(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            from vllm.platforms import current_platform
            from vllm.v1.attention.backends.registry import AttentionBackendEnum

            if not current_platform.is_cpu():
                return
            attention = vllm_config.attention_config
            text = vllm_config.model_config.hf_text_config
            width = int(text.kv_lora_rank) + int(text.qk_rope_head_dim)
            if attention.backend is None:
                attention.backend = AttentionBackendEnum.CPU_MLA
            elif attention.backend == AttentionBackendEnum.AMX_MLA:
                sizes = AttentionBackendEnum.AMX_MLA.get_class().get_supported_head_sizes()
                if width in sizes:
                    return
                supported = " or ".join(map(str, sizes))
                raise ValueError(
                    f"--attention-backend AMX_MLA takes kv_lora_rank + qk_rope_head_dim = {supported} only; "
                    f"this model has {text.kv_lora_rank} + {text.qk_rope_head_dim} = {width}: use CPU_MLA or leave "
                    "the backend unset"
                )

    for architecture in architectures:
        MODELS_CONFIG_MAP.setdefault(architecture, InternVideo3VllmConfig)
