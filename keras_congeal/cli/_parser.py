"""The argument parser class of every command line of the package, and the
argument types they share."""

import argparse
import dataclasses
from collections.abc import Callable

__all__ = ["Command", "OneLineParser", "count_or"]


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


@dataclasses.dataclass(frozen=True)
class Command:
    """A command of `keras-congeal`, and of its own program where it has one.

    Attributes:
        name: str. The subcommand (`keras-congeal NAME`).
        summary: str. Its line in `keras-congeal --help`.
        description: str. The first line of its own `--help`.
        add_arguments: `add_arguments(parser)` adds its arguments.
        run: `run(parser, args)` -> exit status; `parser` reports bad
            arguments and names the program in messages.
        doc: str or None. Its module's docstring: the usage examples after
            its "Usage:" close its `--help`.
        program: str or None. Its own program (`python -m keras_congeal.data`).
    """

    name: str
    summary: str
    description: str
    add_arguments: Callable
    run: Callable
    doc: str | None = None
    program: str | None = None

    def _page(self):
        page = {"description": self.description}
        if self.doc and "Usage:" in self.doc:
            page["epilog"] = self.doc.split("Usage:", 1)[1]
            page["formatter_class"] = argparse.RawDescriptionHelpFormatter
        return page

    def add_to(self, commands):
        """Adds the command to `commands` (an `add_subparsers` result); its
        parser runs it (`args.run(args)`)."""
        parser = commands.add_parser(self.name, help=self.summary, **self._page())
        self.add_arguments(parser)
        parser.set_defaults(run=lambda args: self.run(parser, args))
        return parser

    def program_parser(self):
        """The parser of the command as its own program."""
        parser = OneLineParser(prog=self.program, **self._page())
        self.add_arguments(parser)
        return parser

    def main(self, argv=None) -> int:
        """Runs the command as its own program; returns the exit status."""
        parser = self.program_parser()
        return self.run(parser, parser.parse_args(argv))
