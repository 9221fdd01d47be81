"""The documented import path of the pSp model: ``from psp.model import PSP`` (it lives in psp.models.model)."""
from psp.models.model import PSP

__all__ = ["PSP"]
