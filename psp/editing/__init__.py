"""Editing saved latents: directions (from files, SeFa, GANSpace, fitted), edits, mixing, interpolation."""
from psp.editing.directions import Direction, load_direction, save_direction
from psp.editing.errors import EditingError
from psp.editing.fit import fit_direction
from psp.editing.ganspace import ganspace
from psp.editing.ops import edit, interpolate, mix
from psp.editing.sefa import sefa

__all__ = ["Direction", "EditingError", "edit", "fit_direction", "ganspace", "interpolate",
           "load_direction", "mix", "save_direction", "sefa"]
