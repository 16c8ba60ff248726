"""The two base classes of errors a user is shown as one line.

Every error that a user can cause with what they give the library (a problem, a task file, a
policy, a learner's settings, a budget, a data file) derives from :class:`InputError`, and its
message says what was wrong and what to do. The command line turns these into one line and
exit status 2 (bad usage).

:class:`RunError` is work that could not finish for a reason outside the arguments: the
upstream model failing, a full disk, a damaged or emptied store. Its message names what failed
and what to do; the command line prints it as one line ("Error: ...") with exit status 1,
never as bad usage.

Any other exception is a defect of iapo and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "RunError"]


class InputError(ValueError):
    """Bad input from the caller; the message names what was wrong and how to fix it."""


class RunError(RuntimeError):
    """The work could not finish (upstream, disk, a damaged file); the message says what
    failed and what to do, and that nothing already stored is lost."""
