"""Post-training quantization of vision transformers by Progressive Fine-to-Coarse Reconstruction.

The package root imports nothing heavy, so torch-free parts (records, atomic writes) stay cheap.
"""

__version__ = "0.1.0"
