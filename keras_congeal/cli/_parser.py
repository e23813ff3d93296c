"""The argument parser class of every command line of the package."""

import argparse

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """Reports an argument error in one line on stderr (no usage block), exit 2.

    Args:
        error_prog: str. The program named in error messages; defaults to
            `prog` (a subcommand's parser passes its command's name).
        *args, **kwargs: those of `argparse.ArgumentParser`.
    """

    def __init__(self, *args, error_prog=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog

    def error(self, message):
        self.exit(2, f"{self.error_prog or self.prog}: error: {message} (see --help)\n")
