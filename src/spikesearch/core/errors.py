"""The one exception type that reaches users as a single clear line (the CLI prints it and exits 2)."""


class SpikeSearchError(Exception):
    """A user-facing error: bad input, missing data, mismatched checkpoint. No traceback is shown."""


class Diverged(SpikeSearchError):
    """Training reached a non-finite loss: for one run the end, for a search one cell that failed."""
