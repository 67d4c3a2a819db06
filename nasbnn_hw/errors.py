"""Errors the user can act on. The CLI prints their message as one line and exits with status 2."""


class NasBnnError(ValueError):
    """Base class of every error caused by bad input (a value, a file, a name)."""


class SpaceError(NasBnnError):
    """A search-space description is malformed or unknown."""


class ArchError(NasBnnError):
    """An architecture is malformed, outside its space, or violates the ND constraint."""


class CheckpointError(NasBnnError):
    """A checkpoint file has the wrong layout or cannot be loaded safely."""


class StoreError(NasBnnError):
    """A measurement store cannot be opened, read or written (missing, foreign, corrupt, read-only)."""
