"""Errors raised by hostprofiles; the CLI prints USER_ERRORS as one line, exit 2."""
from __future__ import annotations


class ProfileError(Exception):
    """A host profile can't be read, found, saved or used as asked."""


class SchemaError(ProfileError):
    """A saved profile's JSON has an unknown schema_version or a bad key."""


class PlacementError(ProfileError):
    """A placement is impossible on this host (too many threads, CPU not on host...)."""


USER_ERRORS = (ProfileError,)
