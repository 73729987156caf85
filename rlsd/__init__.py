"""RLSD: reinforcement learning with self-distilled token credit (arXiv 2604.03128), reproduced on Qwen3-VL."""

__version__ = "0.1.0"
