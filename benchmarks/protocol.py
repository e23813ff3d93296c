"""The skeleton of the paper's protocol scripts (`benchmarks.lfw`,
`benchmarks.mnist_protocols`): every method on the same inputs, cell by cell,
into one resumable results file, then tables and panels.

A protocol script subclasses `Protocol` and keeps only what is its own: its
data, its methods, its measures, its tables and its panels. `Protocol.main`
does the rest, the same way for every script:

* the common options: `--methods`, `--epochs`, `--rasl-max-iter`,
  `--rasl-stop-delta`, `--output-dir`, `--resume` (`--retry-failed` where
  failures are recorded), `--report-only`, `--merge` and `--backend-note`;
* the results `<prefix>.json` (`common.ResultStore`: written atomically
  after every finished entry; `--resume` skips the finished ones), the
  images `<prefix><images_suffix>.npz` (atomic, after every entry that adds
  some) and the tables `<prefix>_tables.md` (atomic);
* the report: the tables of the whole file (a resumed run's too, every
  method in it) printed and written, and the script's panels;
* `--merge DIR ...`: one results and images file made of the files of the
  same name in several folders (one run split into processes, each with its
  own `--output-dir`), then the report (`Protocol.merge`).

Files:

    {"schema": ..., "config": ..., "runs": [run_record, ...],
     "results": {key: entry}, "measures": {...}, "finished": "..."}

An entry is `{**cell fields, "method": ..., ["status": "ok",] **measures,
"seconds": ..., "max_rss_bytes": ..., **the method's extra}`; a protocol that
records failures (`record_failures`) marks every entry's `status` and keeps
a method that raised as `status: "failed: <error>"`, rerun only with
`--resume --retry-failed`.
"""

import dataclasses
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import common

__all__ = [
    "Cell",
    "Protocol",
    "read_results",
    "load_images",
    "mean_of",
    "pyplot",
    "save_figure",
    "read_congeal_config",
]


@dataclasses.dataclass
class Cell:
    """One cell of a protocol: every method aligns the same inputs.

    Args:
        name: str. The cell in the log (`"digit 3 sigma 0.2"`).
        key: function. `key(method)` is the results key of a method's entry.
        prepare: function. `prepare()` returns `(fields, inputs)`: `fields`,
            a dict copied into every entry of the cell; `inputs`, what the
            protocol's `run_method`, `measure` and `failed_measures` get.
            Called only when a method of the cell is still to run.
    """

    name: str
    key: Callable[[str], str]
    prepare: Callable[[], tuple]


class Protocol:
    """A protocol script. Subclasses set the class attributes and the hooks.

    Class attributes:
        module: str. The entry point, `"benchmarks.lfw"`. The docstring of
            the subclass's module is the `--help` text (its first line: the
            description; its `Usage:` section: the epilog).
        schema: str. The results file's layout name and version.
        methods: tuple of str. Every method, in the tables' order.
        default_methods: tuple of str or None (all of `methods`).
        images_suffix: str. The images file is `<prefix><images_suffix>.npz`.
        data_name: str. The data in the log line (`"MNIST"`).
        measures: dict. What each measure of an entry means (in the JSON).
        record_failures: bool. A method that raises is an entry with a
            failed `status` (and `--retry-failed` exists), instead of
            stopping the run.
        epochs_help, rasl_stop_delta_help: str. `--help` of those options.

    Hooks with a default: `read_config(config)`, a results file's config as
    this code reads it before it is compared (resume, merge): by default
    `read_congeal_config`.
    """

    module = None
    schema = None
    methods = ()
    default_methods = None
    images_suffix = "_images"
    data_name = "data"
    measures = {}
    record_failures = False
    epochs_help = "keras_congeal epochs (default: the settings' own)"
    rasl_stop_delta_help = "RASL stopping threshold (default 0.005)"

    # === Hooks ===

    def read_config(self, config):
        return read_congeal_config(config)

    def add_arguments(self, parser):
        """Adds the script's own options to `parser`."""

    def check_arguments(self, args, parser):
        """Completes and checks the script's own options (`parser.error`)."""

    def name(self, args):
        """The file name prefix of the outputs (no directory)."""
        raise NotImplementedError

    def open_data(self, args):
        """Finds the data; returns what `cells` reads (printed in the log).
        Raises `FileNotFoundError` or `ValueError` with a one-line message."""
        raise NotImplementedError

    def config(self, args):
        """The settings a resumed file must share (`common.ResultStore`)."""
        raise NotImplementedError

    def run_fields(self, args, data):
        """Fields added to this run's `common.run_record`."""
        return {}

    def cells(self, args, data, images):
        """Yields the `Cell`s to run, in order; may add images to `images`."""
        raise NotImplementedError

    def run_method(self, method, inputs, args):
        """Runs `method` on a cell's inputs: returns a dict with at least
        `"aligned"`, `"transforms"` and `"extra"` (a dict for the entry)."""
        raise NotImplementedError

    def measure(self, inputs, key, output):
        """`(measures, images)` of one method's output: a dict for the entry
        and the images (name -> array) for the images file."""
        raise NotImplementedError

    def failed_measures(self, inputs):
        """The measures of a failed entry (with `record_failures`)."""
        return {}

    def describe(self, entry):
        """The log line of a finished entry."""
        raise NotImplementedError

    def tables(self, results, methods):
        """The markdown tables of `results`, for `methods`."""
        raise NotImplementedError

    def plot_panels(self, results, images, prefix, methods):
        """Writes the panels (PNG); returns their paths."""
        return []

    # === Command line ===

    def parser(self):
        parser = common.script_parser(self.module, sys.modules[type(self).__module__].__doc__)
        self.add_arguments(parser)
        default = self.default_methods or self.methods
        parser.add_argument(
            "--methods",
            nargs="+",
            default=list(default),
            metavar="METHOD",
            help=f"some of {', '.join(self.methods)} (default: "
            + ("all" if self.default_methods is None else " ".join(default))
            + ")",
        )
        parser.add_argument("--epochs", type=int, default=None, help=self.epochs_help)
        parser.add_argument(
            "--rasl-max-iter",
            type=int,
            default=1000,
            help="RASL outer iterations at most (default 1000, rasl's own)",
        )
        parser.add_argument(
            "--rasl-stop-delta", type=float, default=0.005, help=self.rasl_stop_delta_help
        )
        parser.add_argument("--output-dir", default=str(common.RESULTS_DIR))
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the results file, skipping finished entries",
        )
        if self.record_failures:
            parser.add_argument(
                "--retry-failed",
                action="store_true",
                help="with --resume, run again the entries whose method failed",
            )
        parser.add_argument(
            "--report-only",
            action="store_true",
            help="only rebuild the tables and figures from the results file",
        )
        parser.add_argument(
            "--merge",
            nargs="+",
            default=None,
            metavar="DIR",
            help="write the union of the results and images files of this name in "
            "the folders DIR (parts of one run; with --resume, and the existing file) "
            "to --output-dir, then the tables and figures",
        )
        parser.add_argument(
            "--backend-note",
            default=None,
            help="free text stored with the run (e.g. 'shared 2-core CPU')",
        )
        return parser

    def parse_args(self, argv=None):
        """The checked arguments (`--methods` in the tables' order) and the parser."""
        parser = self.parser()
        args = parser.parse_args(argv)
        unknown = [m for m in args.methods if m not in self.methods]
        if unknown:
            parser.error(f"unknown --methods {unknown}; expected some of {list(self.methods)}")
        args.methods = [m for m in self.methods if m in args.methods]
        if args.epochs is not None and args.epochs < 1:
            parser.error("--epochs must be >= 1")
        if args.rasl_max_iter < 1:
            parser.error("--rasl-max-iter must be >= 1")
        if getattr(args, "retry_failed", False) and not args.resume:
            # Without --resume the results file is started afresh: nothing to retry.
            parser.error("--retry-failed needs --resume (without it the results file is replaced)")
        if args.merge and args.report_only:
            parser.error("--merge and --report-only exclude each other")
        self.check_arguments(args, parser)
        return args, parser

    def main(self, argv=None) -> int:
        args, parser = self.parse_args(argv)
        prefix = str(Path(args.output_dir) / self.name(args))
        path = Path(prefix + ".json")
        images_path = prefix + self.images_suffix + ".npz"
        if args.merge:
            return self.merge(args, argv, parser, prefix)
        if args.report_only:
            try:
                results = read_results(path)
            except ValueError as error:
                parser.error(f"--report-only: {error}")
            self.report(results, load_images(images_path), args.methods, prefix)
            return 0
        try:
            data = self.open_data(args)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
        run = common.run_record(argv, note=args.backend_note, module=self.module)
        run.update(self.run_fields(args, data))
        try:
            store = common.ResultStore(
                path,
                self.schema,
                self.config(args),
                run,
                resume=args.resume,
                read_config=self.read_config,
            )
        except ValueError as error:
            parser.error(str(error))
        images = load_images(images_path) if args.resume else {}
        store.set("measures", self.measures)
        common.log(f"{self.data_name}: {data}; writing {path}")
        self.run_cells(store, images, images_path, self.cells(args, data, images), args)
        if images:
            common.write_npz_atomic(images_path, images)
        store.set("finished", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.report(store.results, images, self.methods_in(store.results), prefix)
        return 0

    def merge(self, args, argv, parser, prefix):
        """Writes to `prefix` the union of the results and images files of
        its name in the `--merge` folders (with `--resume`, the existing file
        first), then the report. Every file must have this protocol's schema
        and the first one's config (read by `read_config`), and a key
        in two files the same entry and array; else a parser error naming the
        file, and nothing written. `runs` are concatenated, then this merge's."""
        parts = [Path(folder) / Path(prefix).name for folder in args.merge]
        if args.resume and Path(prefix + ".json").exists():
            parts.insert(0, Path(prefix))
        files = []
        for part in parts:
            path, part_images = Path(f"{part}.json"), f"{part}{self.images_suffix}.npz"
            try:
                data = common.read_results_file(path)
            except ValueError as error:
                parser.error(f"--merge: {error}")
            try:
                files.append((path, data, load_images(part_images)))
            except (OSError, ValueError, zipfile.BadZipFile) as error:
                parser.error(f"--merge: {part_images} is not an images file ({error})")
        first_path, first, _ = files[0]
        config = common.config_as_read(first.get("config"), self.read_config)
        runs, results, images = [], {}, {}
        for path, data, arrays in files:
            if data.get("schema") != self.schema:
                parser.error(
                    f"--merge: {path} has schema {data.get('schema')!r}, expected {self.schema!r}"
                )
            other = common.config_as_read(data.get("config"), self.read_config)
            if other != config:
                shown = (other, config)
                if isinstance(other, dict) and isinstance(config, dict):  # only what differs
                    keys = sorted(k for k in {**other, **config} if other.get(k) != config.get(k))
                    shown = tuple({k: c.get(k) for k in keys} for c in shown)
                parser.error(
                    f"--merge: {path} was written with config {shown[0]!r}, "
                    f"{first_path} with {shown[1]!r}"
                )
            runs += data.get("runs", [])
            for key, entry in data["results"].items():
                if results.setdefault(key, entry) != entry:
                    parser.error(
                        f"--merge: {path}: its entry {key!r} differs from that of an earlier file"
                    )
            for key, array in arrays.items():
                kept = images.setdefault(key, array)
                if not np.array_equal(kept, array, equal_nan=array.dtype.kind in "fc"):
                    parser.error(
                        f"--merge: {path}: its image {key!r} differs from that of an earlier file"
                    )
        run = common.run_record(argv, with_keras=False, note=args.backend_note, module=self.module)
        run["merged"] = [common.portable_path(path) for path, _, _ in files]
        images_path = prefix + self.images_suffix + ".npz"
        if images or Path(images_path).exists():
            common.write_npz_atomic(images_path, images)
        merged = {
            "schema": self.schema,
            "config": first.get("config"),
            "runs": [*runs, run],
            "results": results,
            "measures": self.measures,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        common.write_json_atomic(prefix + ".json", merged)
        common.log(f"merged {len(files)} files into {prefix}.json: {len(results)} entries")
        self.report(results, images, self.methods_in(results), prefix)
        return 0

    # === Protocol ===

    def todo(self, store, cell, args):
        """The methods of `cell` still to run: missing, or failed and retried."""
        retry = self.record_failures and args.retry_failed
        return [
            m
            for m in args.methods
            if not store.done(cell.key(m))
            or (retry and store.get(cell.key(m)).get("status", "ok") != "ok")
        ]

    def run_cells(self, store, images, images_path, cells, args):
        """Runs the missing methods of every cell; each entry is saved as it ends."""
        for cell in cells:
            todo = self.todo(store, cell, args)
            if not todo:
                common.log(f"{cell.name}: done, skipped")
                continue
            fields, inputs = cell.prepare()
            for method in todo:
                key = cell.key(method)
                start = time.perf_counter()
                try:
                    output = self.run_method(method, inputs, args)
                except Exception as error:  # a method that breaks on a cell is a result too
                    if not self.record_failures:
                        raise
                    status = f"failed: {type(error).__name__}: {str(error)[:300]}"
                    entry = {
                        **fields,
                        "method": method,
                        "status": status,
                        "seconds": time.perf_counter() - start,
                        **self.failed_measures(inputs),
                    }
                    store.put(key, entry)
                    common.log(f"{cell.name} {method:15s} {status}")
                    continue
                seconds = time.perf_counter() - start
                measures, new_images = self.measure(inputs, key, output)
                status = {"status": "ok"} if self.record_failures else {}
                entry = {
                    **fields,
                    "method": method,
                    **status,
                    **measures,
                    "seconds": seconds,
                    "max_rss_bytes": common.rss_bytes(),
                    **output["extra"],
                }
                store.put(key, entry)
                if new_images:
                    images.update(new_images)
                    common.write_npz_atomic(images_path, images)
                common.log(self.describe(entry))

    # === Report ===

    def methods_in(self, results):
        """The methods of `results`, in the tables' order: the report of a
        whole file (which --resume and --merge extend), not only of --methods."""
        present = {entry.get("method") for entry in results.values()}
        return [m for m in self.methods if m in present]

    def report(self, results, images, methods, prefix):
        """Writes `<prefix>_tables.md` (atomic) and prints it; writes the panels."""
        from keras_congeal.io import write_bytes_atomic

        text = self.tables(results, methods)
        write_bytes_atomic(f"{prefix}_tables.md", text + "\n")
        print(text)
        for path in self.plot_panels(results, images, prefix, methods):
            common.log(f"wrote {path}")


def read_congeal_config(config):
    """A results file's config as this code reads it: `congeal_settings`
    through `CongealSettings.from_dict`, which gives the settings added to
    `CongealSettings` since the file was written their defaults (a file
    written before `precision` existed resumes with `precision="float32"`,
    and only with it; one written before `learning_rate_schedule` with
    `"constant"`, the rate it trained with)."""
    settings = config.get("congeal_settings")
    if not isinstance(settings, dict):
        return config
    from keras_congeal.settings import CongealSettings

    try:
        settings = CongealSettings.from_dict(settings).to_dict()
    except (TypeError, ValueError):  # not settings this code reads: compared as written
        return config
    return {**config, "congeal_settings": settings}


def read_results(path):
    """The `results` of a results file; `ValueError` (one line) when it is
    missing or not one."""
    return common.read_results_file(path)["results"]


def load_images(path):
    """The arrays of an images `.npz` as a dict, `{}` when it does not exist."""
    if not Path(path).exists():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def mean_of(values):
    """The mean of the finite values among `values` (None skipped; the JSON's
    "inf" and "nan" strings are not finite), or None."""
    values = [float(v) for v in values if v is not None]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else None


def pyplot():
    """`matplotlib.pyplot` on the Agg backend, or None (and a note on stderr)
    when matplotlib is not installed: the panels are then skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        common.log(
            "matplotlib is not installed: no PNG (pip install -r benchmarks/requirements.txt)"
        )
        return None
    return plt


def save_figure(plt, fig, path, dpi):
    """Writes `fig` to the PNG `path` and closes it; returns `path`."""
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
