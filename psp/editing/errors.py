"""The editing layer's user-facing error."""
from psp.errors import InputError


class EditingError(InputError):
    """A user mistake (bad direction file, strength range, layer range, input set); one line, exit 2."""
