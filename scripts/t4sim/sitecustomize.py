"""Make a modern NVIDIA card look like Colab's free Tesla T4 to the Python code that picks a precision.

Who it is for: maintainers checking the T4 (fp16) path on a bigger card (scripts/gpu_verify.sh, T4=1). Put this
folder first on PYTHONPATH; Python imports sitecustomize at start-up:
    PYTHONPATH=scripts/t4sim:$PYTHONPATH python labs/unsloth_finetune/train_tiny_model.py --test_mode
What changes: torch.cuda.get_device_capability() answers 7.5 (Turing: fp16 only, no native bf16) and the device
name reads "Tesla T4 (simulated)", except when a kernel compiler asks (triton, torch inductor/dynamo,
bitsandbytes): those must build for the real card. torch.cuda.is_bf16_supported() answers True, as it does on a
real T4 (emulated bf16), which is exactly the trap the lab's dtype decision has to avoid.
Speed and memory stay the real card's: this checks decisions, not performance.
"""

import sys

import torch

T4_CAPABILITY = (7, 5)
COMPILERS = ("triton", "torch._inductor", "torch._dynamo", "bitsandbytes", "torch.utils.cpp_extension")
_real_capability = torch.cuda.get_device_capability


def _asked_by_a_compiler() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if (frame.f_globals.get("__name__") or "").startswith(COMPILERS):
            return True
        frame = frame.f_back
    return False


def _capability(*args, **kwargs):
    return _real_capability(*args, **kwargs) if _asked_by_a_compiler() else T4_CAPABILITY


torch.cuda.get_device_capability = _capability
torch.cuda.get_device_name = lambda *args, **kwargs: "Tesla T4 (simulated)"
torch.cuda.is_bf16_supported = lambda *args, **kwargs: True
