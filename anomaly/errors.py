"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class AnomalyError(Exception):
    """Bad input (a file, a folder, a flag) described in one line for the user."""


class AnomalyWarning(UserWarning):
    """Input used with a caveat the user should know of; the CLI prints it as one line."""
