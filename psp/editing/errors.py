"""The editing layer's user-facing error."""


class EditingError(ValueError):
    """A user mistake (bad direction file, strength range, layer range, input set); one line."""
