"""One model across devices (issue 22, item 8): accelerate's cpu/disk offload and split device maps give the same
greedy tokens as the model on one device, for a real video prompt and a text prompt.

The small checkpoint folder (`conftest.small_checkpoint`) is loaded as users load it, `AutoModelForCausalLM` with
`trust_remote_code=True`, once normally and once with a `device_map` that puts decoder layers (and the vision tower)
on "disk" with an `offload_folder`: accelerate's hooks then keep those weights on the meta device and load them
around each module's own forward. The CUDA tests run only where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from conftest import DEMO_VIDEO
from configuration_internvideo3 import InternVideo3TextConfig
from internvideo3.convert.small_checkpoint import SMALL_TEXT_CONFIG
from modeling_internvideo3 import AttentionMaskSpec, InternVideo3TextForCausalLM

NEW_TOKENS = 6
LAYER = "model.language_model.layers.{}"


def multimodal_map(layers: list[str], visual: str = "cpu", rest: str = "cpu") -> dict[str, str | int]:
    """A device_map of the small multimodal model: `layers[i]` is decoder layer i's device."""
    return {
        "model.visual": visual,
        "model.language_model.embed_tokens": rest,
        **{LAYER.format(i): device for i, device in enumerate(layers)},
        "model.language_model.norm": rest,
        "model.language_model.rotary_emb": rest,
        "lm_head": rest,
    }


OFFLOAD_MAPS = {
    "layers_on_cpu_and_disk": multimodal_map(["cpu", "disk", "cpu", "disk"]),
    "vision_tower_and_layers_on_disk": multimodal_map(["disk", "cpu", "disk", "cpu"], visual="disk"),
}


@pytest.fixture(scope="module")
def prompts(small_checkpoint) -> dict[str, dict]:
    """{"video": a real clip's inputs, "text": a text-only chat}, from the folder's own processor."""
    processor = AutoProcessor.from_pretrained(small_checkpoint, trust_remote_code=True)
    chats = {
        "video": [{"role": "user", "content": [
            {"type": "video", "video": str(DEMO_VIDEO), "fps": 2.0, "max_frames": 4},
            {"type": "text", "text": "What is happening in this video?"},
        ]}],
        "text": [{"role": "user", "content": [{"type": "text", "text": "Name three colours of a rainbow."}]}],
    }  # fmt: skip
    return {
        name: dict(processor.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True,
                                                 return_tensors="pt"))
        for name, chat in chats.items()
    }  # fmt: skip


def greedy(model, inputs: dict, device="cpu") -> list[int]:
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def reference(small_checkpoint, prompts) -> dict[str, list[int]]:
    """Greedy tokens of the folder loaded on one device (the CPU)."""
    model = AutoModelForCausalLM.from_pretrained(small_checkpoint, trust_remote_code=True, dtype=torch.float32)
    return {name: greedy(model, inputs) for name, inputs in prompts.items()}


@pytest.mark.parametrize("device_map", OFFLOAD_MAPS.values(), ids=OFFLOAD_MAPS.keys())
def test_disk_offload_generates_the_tokens_of_one_device(small_checkpoint, prompts, reference, device_map, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        small_checkpoint, trust_remote_code=True, dtype=torch.float32, device_map=device_map,
        offload_folder=tmp_path / "offload",
    )  # fmt: skip
    assert type(model).__module__.startswith("transformers_modules")
    # the offloaded weights really are on the meta device between forwards (accelerate's hooks load them)
    attention = model.model.language_model.layers[1 if device_map[LAYER.format(1)] == "disk" else 0].self_attn
    assert attention.kv_b_proj.weight.device.type == "meta"
    assert {name: greedy(model, inputs) for name, inputs in prompts.items()} == reference


def test_offloaded_q_norm_layers_generate_the_tokens_of_one_device(tmp_path):
    """A converted Qwen3 text model keeps its `q_norm` (SPEC §9.4), whose weight the attention reads directly."""
    torch.manual_seed(0)
    config = InternVideo3TextConfig(**SMALL_TEXT_CONFIG, vocab_size=512, eos_token_id=2, q_norm=True)
    model = InternVideo3TextForCausalLM(config).float().eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)  # not the init's ones: a wrong weight shows in tokens
    model.save_pretrained(tmp_path / "text")
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(config.num_hidden_layers)}}  # fmt: skip
    offloaded = InternVideo3TextForCausalLM.from_pretrained(
        tmp_path / "text", dtype=torch.float32, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    assert offloaded.model.layers[1].self_attn.q_norm.weight.device.type == "meta"
    inputs = {"input_ids": torch.randint(3, 512, (1, 10), generator=torch.Generator().manual_seed(0))}
    assert greedy(offloaded, inputs) == greedy(model, inputs)


MASKS = {
    "4d_bool": lambda: torch.ones(2, 1, 3, 8, dtype=torch.bool).tril(5),
    "4d_additive": lambda: torch.zeros(2, 1, 3, 8).masked_fill(~torch.ones(3, 8, dtype=torch.bool).tril(5), -1e9),
    "2d_padding": lambda: torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8]),
}


@pytest.mark.parametrize("make_mask", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("start, end", [(0, 3), (2, 3)])
def test_attention_mask_blocks_are_built_on_the_asked_device(make_mask, start, end):
    """`AttentionMaskSpec` is no tensor, so accelerate's hooks never move it: each block must come out on the device
    of the layer that asks (the meta device stands in for another device here)."""
    spec = AttentionMaskSpec(make_mask(), query_len=3, past_len=5)
    mask, _, keys = spec.block(start, end, torch.device("meta"))
    assert mask.device.type == "meta" and mask.dtype == torch.bool and mask.shape[-2:] == (end - start, keys)


# ----------------------------------------------------------------------------------------------------------------------
# CUDA: layers split between a GPU and the CPU (run only where a GPU is present)
# ----------------------------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("visual", ["cpu", 0])
def test_layers_split_between_cuda_and_cpu_generate_the_tokens_of_one_device(small_checkpoint, prompts, visual):
    """Layers 0 and 2 (and the embeddings) on cuda:0, layers 1 and 3 and the head on the CPU, executed where they sit
    (accelerate's `dispatch_model` with `main_device="cpu"`; transformers would treat "cpu" as offload to the GPU):
    hidden states, masks, DeepStack features and the latent cache cross devices at every layer; decode on cuda:0
    runs the Triton kernel."""
    from accelerate import dispatch_model

    model = AutoModelForCausalLM.from_pretrained(small_checkpoint, trust_remote_code=True, dtype=torch.float32)
    tokens = {name: greedy(model, inputs) for name, inputs in prompts.items()}
    device_map = multimodal_map([0, "cpu", 0, "cpu"], visual=visual)
    device_map["model.language_model.embed_tokens"] = 0
    dispatch_model(model, device_map=device_map, main_device="cpu")
    assert model.model.language_model.layers[0].self_attn.kv_b_proj.weight.device.type == "cuda"
    assert model.model.language_model.layers[1].self_attn.kv_b_proj.weight.device.type == "cpu"
    split = {name: greedy(model, inputs) for name, inputs in prompts.items()}
    assert split == tokens


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_latent_kernel_runs_on_its_inputs_device():
    """Triton launches on the current device: inputs on cuda:1 while cuda:0 is current must still be right."""
    from internvideo3.kernels.latent_attention import absorbed_attention_torch, absorbed_attention_triton

    g = torch.Generator().manual_seed(0)
    B, H, S, T, r, d_r = 1, 4, 1, 64, 32, 16
    q_lat, q_pe = torch.randn(B, H, S, r, generator=g), torch.randn(B, H, S, d_r, generator=g)
    ckv, k_pe = torch.randn(B, T, r, generator=g), torch.randn(B, T, d_r, generator=g)
    expected = absorbed_attention_torch(q_lat, q_pe, ckv, k_pe, 0.1)
    with torch.cuda.device(0):
        out = absorbed_attention_triton(*(t.to("cuda:1") for t in (q_lat, q_pe, ckv, k_pe)), 0.1)
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
