"""Exceptions whose messages are meant for the user (they end up in manifest reasons)."""


class FacePrivError(Exception):
    """Base class: an error with a message a user can act on."""


class InputError(FacePrivError):
    """One input photo cannot be processed (it becomes that photo's `error` row)."""


class CheckpointError(FacePrivError):
    """A model checkpoint is missing, corrupt, or not a facepriv checkpoint."""


class UsageError(FacePrivError):
    """The command line asks for something impossible or unsafe."""
