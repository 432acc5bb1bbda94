"""Errors a user can cause. The CLI prints their message (no traceback) and exits with ``exit_code``."""


class UserError(Exception):
    """Bad input from the user: a path, an image, a model name, a config key, a checkpoint."""

    exit_code = 2
    # False on the ranks but 0 of a torchrun job for an error every rank raises alike (a stop, a
    # divergence), so that its message is printed once, not once per rank
    printed = True


class UnknownModelError(UserError, KeyError):
    """A model name or alias that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])
