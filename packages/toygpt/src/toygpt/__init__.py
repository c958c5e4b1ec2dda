"""toygpt: GPT-2 in PyTorch on toykernels."""

from toygpt.model import GPT, GPTConfig

__version__ = "0.1.0"

__all__ = ["GPT", "GPTConfig"]
