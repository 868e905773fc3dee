"""Errors a user can act on: the CLI prints their message, never a traceback."""


class VimiError(Exception):
    """A clear, specific problem with input, configuration or environment."""
