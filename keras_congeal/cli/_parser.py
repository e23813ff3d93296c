"""The argument parser class of every command line of the package, and the
argument types they share."""

import argparse

__all__ = ["OneLineParser", "count_or"]


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

    @property
    def program(self):
        """The program named in error messages (`keras-congeal`, or the
        program of a stand-alone entry point)."""
        return self.error_prog or self.prog

    def error(self, message):
        self.exit(2, f"{self.program}: error: {message} (see --help)\n")


def count_or(keyword, keyword_value, message):
    """An argument type: `keyword` (read as `keyword_value`) or an integer >= 1.

    Args:
        keyword: str. The word accepted besides a count (`"all"`, `"dynamic"`).
        keyword_value: what `keyword` is read as.
        message: str. The error for anything else, formatted with `value`.

    Returns:
        A function for `add_argument(type=...)`.
    """

    def parse(value):
        if value == keyword:
            return keyword_value
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise argparse.ArgumentTypeError(message.format(value=value))
        return count

    return parse
