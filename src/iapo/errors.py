"""The one base class of bad-input errors.

Every error that a user can cause with what they give the library (a problem, a task file, a
policy, a learner's settings, a budget, a data file) derives from :class:`InputError`, and its
message says what was wrong and what to do. The command line turns exactly these into one line
and exit status 2; any other exception is a defect of iapo and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the caller; the message names what was wrong and how to fix it."""
