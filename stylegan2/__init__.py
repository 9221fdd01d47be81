"""StyleGAN2 generator (rosinality-compatible names), its ops and safe checkpoint loading.

Importable without `psp`; never compiles anything at import.
"""
from .generator import Generator
from .inference import optimize_generator_for_inference
from .io import UnsafeCheckpointError, safe_load, sha256_file
from .loader import load_generator

__all__ = ["Generator", "UnsafeCheckpointError", "load_generator", "optimize_generator_for_inference",
           "safe_load", "sha256_file"]
