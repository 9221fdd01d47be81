"""The documented import path of the ArcFace loader: ``from psp.nets.arcface import load_arcface``.

The encoder networks themselves live in ``psp.models.nets``; ArcFace in ``psp.models.arcface``.
"""
