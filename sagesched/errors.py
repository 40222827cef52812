"""Errors a user can fix from the command line (a missing file, a bad setting).

`sagesched.cli.main` prints their message as one line on stderr and exits 1, instead of a traceback;
any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem in what the user asked for or in their environment; the message says how to fix it."""
