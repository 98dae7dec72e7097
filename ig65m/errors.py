"""The one exception family for user errors.

Anything a user can cause (a missing file, a bad video, a wrong option, an unreachable server) raises
`Ig65mError`; the CLI prints its message as one line on stderr and exits with code 2. Any other
exception is a bug and keeps its traceback.
"""


class Ig65mError(Exception):
    """A user error, reported as one line and exit code 2."""
