"""Where torch work runs: `auto` (CUDA when available, else CPU), `cpu`, or `cuda[:n]` (gcl.device,
rerank.spec.device)."""

from __future__ import annotations

import re

from lagcl.errors import ConfigError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(name: str = "auto") -> str:
    """The torch device string for a device setting; a CUDA device that is not there is a clear error."""
    import torch

    if not re.match(DEVICE_PATTERN, name or ""):
        raise ConfigError(f"device '{name}': use auto, cpu, cuda or cuda:<n>")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' asked for, but torch sees no CUDA device: set the device to auto or cpu")
        n = int(name.split(":")[1]) if ":" in name else 0
        if n >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}': torch sees {torch.cuda.device_count()} CUDA device(s) (0.."
                              f"{torch.cuda.device_count() - 1})")
    return name
