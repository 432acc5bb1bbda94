"""Errors a user can cause. The CLI prints their message (no traceback) and exits with ``exit_code``."""


class UserError(Exception):
    """Bad input from the user: a path, an image, a model name, a config key, a checkpoint."""

    exit_code = 2


class UnknownModelError(UserError, KeyError):
    """A model name or alias that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])
