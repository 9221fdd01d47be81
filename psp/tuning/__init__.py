"""Fidelity beyond W+: pivotal tuning of the generator per image or per group, saved as compact
low-rank deltas of the base generator (``stylegan2.delta``).

    from psp.tuning import tune_generator, save_delta
    tuned = tune_generator(model.generator, images, codes, config.tune, lpips=lpips)
"""
from psp.tuning.files import save_delta
from psp.tuning.pti import Tuning, locality_codes, tune, tune_generator

__all__ = ["Tuning", "tune", "tune_generator", "locality_codes", "save_delta"]
