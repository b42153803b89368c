"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class DetpruneError(Exception):
    """A user-facing error: bad input, an impossible target, a missing capability.

    The message is a single line that says what is wrong and, where possible, what to do.
    """


class BadInputError(DetpruneError):
    """An input file or folder that cannot be read as what it claims to be."""


class UnsupportedError(DetpruneError):
    """A model, precision or backend this installation cannot handle."""
