"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class AnomalyError(Exception):
    """Bad input (a file, a folder, an option) described in one line for the user.

    Args:
        message: what is wrong and what was expected.
        option: the configuration option it concerns (e.g. "coreset_ratio"), if any. The
            library names the option; a command line shows its own flag for it instead.
    """

    def __init__(self, message: str, option: str | None = None):
        self.message, self.option = message, option
        super().__init__(f"{option}: {message}" if option else message)


class AnomalyWarning(UserWarning):
    """Input used with a caveat the user should know of; the CLI prints it as one line."""
