"""Root of metaiqa's exceptions.

Every error a user can cause derives from `MetaIQAError`, so the CLI (exit codes) and the
service (4xx answers) each map them in one place. Concrete classes live in the module
that raises them and are named for the fault.
"""


class MetaIQAError(Exception):
    """An error caused by input (files, configs, requests), not by a bug."""


class InvalidInput(MetaIQAError, ValueError):
    """A value given by the user is out of range or malformed."""
