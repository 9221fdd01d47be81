"""``from psp.nets.arcface import load_arcface`` keeps working; the recogniser lives in psp.models.arcface."""
from psp.models.arcface import ArcFace
from psp.models.official import load_arcface

__all__ = ["ArcFace", "load_arcface"]
