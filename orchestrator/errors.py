"""User errors raised by the orchestrator (store, import, report, spec).

Every message is one line naming the file, line or field at fault; the CLI
prints it and exits 2. Lanes add subclasses of ``NumasweepError``; because
``USER_ERRORS`` lists the base class, new subclasses are caught automatically.
"""


class NumasweepError(ValueError):
    """Bad input to the orchestrator: a file, flag, spec or stored value."""


class StoreError(NumasweepError):
    """The results store cannot be opened or the data given to it is invalid."""


class ImportFormatError(NumasweepError):
    """A file given to ``numasweep import`` cannot be read; names file and line."""


class ReportError(NumasweepError):
    """A report cannot be produced from what is in the store (no such run, ...)."""


USER_ERRORS = (NumasweepError,)
