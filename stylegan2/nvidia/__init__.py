"""Import NVIDIA StyleGAN2-ADA / StyleGAN3 (``stylegan2`` config) generator pickles, running
nothing from the file: `unpickler` reads the pickle into inert records, `mapping` turns a
generator record into a rosinality-format state dict."""
from .mapping import NvidiaImportError, nvidia_to_rosinality
from .unpickler import PersistentRecord, is_nvidia_pickle, load_nvidia_pickle

__all__ = ["NvidiaImportError", "PersistentRecord", "is_nvidia_pickle", "load_nvidia_pickle",
           "nvidia_to_rosinality"]
