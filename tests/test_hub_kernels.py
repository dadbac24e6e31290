"""Hub kernels (issue 22 item 9): transformers >= 5.25 kernelizes on load by default, swapping the forward of every
class decorated with `use_kernel_forward_from_hub(name)` for the Hub layer of that name. Our text RMSNorm must take the
same kernel as Qwen3-VL's text RMSNorm, and no other class of ours may take one (M²LA attention, interleaved RoPE and
our MLP wiring have no Hub layer with their semantics).

The decorations are observed by loading each module's source afresh with transformers' own decorator wrapped to
record what it is applied to (the `kernels` package, which would mark the classes, is not installable here)."""

import importlib.util
import sys
from pathlib import Path

import torch
import transformers.integrations
from transformers.models.qwen3_vl import modeling_qwen3_vl

import modeling_internvideo3

ROOT = Path(__file__).resolve().parents[1]
USE_KERNEL_FORWARD_FROM_HUB = transformers.integrations.use_kernel_forward_from_hub  # before any test wraps it


def decorations(module_name: str, path: str, monkeypatch) -> dict[str, str]:
    """{class name: Hub layer name} for every class `path` decorates with `use_kernel_forward_from_hub`, read by
    executing the file afresh as `module_name` (a throwaway module, removed from sys.modules again)."""
    seen = {}

    def recording(layer_name, *args, **kwargs):
        decorate = USE_KERNEL_FORWARD_FROM_HUB(layer_name, *args, **kwargs)

        def wrapper(obj):
            seen[obj.__name__] = layer_name
            return decorate(obj)

        return wrapper

    monkeypatch.setattr(transformers.integrations, "use_kernel_forward_from_hub", recording)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return seen


def test_only_our_rmsnorm_takes_a_hub_kernel_the_one_qwen3vl_text_rmsnorm_takes(monkeypatch):
    """Our classes register exactly one Hub layer name, on InternVideo3RMSNorm, and it is the name transformers'
    Qwen3VLTextRMSNorm registers ("RMSNorm"); attention, MLP, rotary embedding and the rest register none."""
    ours = decorations("_hub_kernel_probe_internvideo3", str(ROOT / "modeling_internvideo3.py"), monkeypatch)
    qwen = decorations("transformers.models.qwen3_vl._hub_kernel_probe", modeling_qwen3_vl.__file__, monkeypatch)
    assert ours == {"InternVideo3RMSNorm": qwen["Qwen3VLTextRMSNorm"]} == {"InternVideo3RMSNorm": "RMSNorm"}


def test_hub_rmsnorm_sees_the_qwen3vl_layer_it_was_written_for():
    """The Hub layer reuses the module's state by name: ours has Qwen3VLTextRMSNorm's attributes, forward arity and
    output (bit for bit, bf16 in, fp32 inside)."""
    ours = modeling_internvideo3.InternVideo3RMSNorm(64, eps=1e-6)
    qwen = modeling_qwen3_vl.Qwen3VLTextRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(64))
        qwen.weight.copy_(ours.weight)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in qwen.named_parameters()] == ["weight"]
    assert ours.variance_epsilon == qwen.variance_epsilon
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    assert torch.equal(ours(x), qwen(x))
    if hasattr(modeling_qwen3_vl.Qwen3VLTextRMSNorm, "kernel_layer_name"):  # `kernels` installed: the real marks
        assert ours.kernel_layer_name == qwen.kernel_layer_name

