"""Quantization machinery: recipes and configs (torch-free), quantizers, quantized-module base
class and the model rewriting (these import torch)."""
