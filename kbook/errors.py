"""kbook's exceptions, all under one root so the CLI can turn them into one-line messages.

    KbookError                 anything kbook reports to a user instead of a traceback
    ├── UsageError             a bad option or argument (exit 2)
    ├── InputError             input that cannot be used: missing path, not a segment (exit 2)
    │   └── SegmentError       a file that is not a readable kbook segment
    ├── FrameError             a frame that is JSON but not a well-formed Kraken book frame
    ├── OutputError            output that cannot be written: exists, unwritable, disk full (exit 2)
    ├── RecordError            the recorder could not record at all (exit 1)
    └── TaskError              a unit of replay work failed on its pool or cluster, retried (exit 1)

Every message names the thing at fault and says what to do about it.
"""


class KbookError(Exception):
    """Root of kbook's errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(KbookError):
    """A bad option or argument."""

    exit_code = 2


class InputError(KbookError):
    """Input that cannot be used at all."""

    exit_code = 2


class SegmentError(InputError):
    """A file that is not a readable kbook segment."""


class FrameError(KbookError):
    """A frame that is JSON but not a well-formed Kraken book frame."""


class OutputError(KbookError):
    """Output that cannot be written."""

    exit_code = 2


class RecordError(KbookError):
    """The recorder could not record at all."""


class TaskError(KbookError):
    """A unit of replay work that failed on a pool or cluster, after its retries."""
