"""The `data` command: generates the paper's digit data sets from a local MNIST.

Usage:

    # 6000 threes perturbed at sigma = 0.2 ("perturbed MNIST"), with their
    # perturbation matrices and unperturbed originals.
    keras-congeal data mnist --digit 3 --n 6000 --sigma 0.2 --seed 0 \\
        --output threes.npy --transforms threes_transforms.npy \\
        --originals threes_originals.npy --mnist ../shared/data

    # 1000 plain MNIST sevens (sigma 0), from the test split.
    keras-congeal data mnist --digit 7 --n 1000 --split test --output sevens.npy

    # 100000 affNIST-like 40x40 twos, written to HDF5 (dataset "images").
    keras-congeal data affnist --digit 2 --n 100000 --output twos.h5

    # 1000000 infiMNIST-like fives (sources reused, sampled with replacement).
    keras-congeal data infimnist --digit 5 --n 1000000 --output fives.npy

The same command, under its own program name: `python -m keras_congeal.data`
(same arguments).

MNIST is read from `--mnist` (mnist.npz or its directory), else from the
directory in `$KERAS_CONGEAL_DATA`. Outputs are `.npy` (written through
`np.lib.format.open_memmap`) or `.h5`/`.hdf5` (datasets `images`,
`transforms`, `originals`), filled chunk by chunk, so memory stays bounded.
Each is written to a temporary file beside it and moved into place at the
end; an existing file is kept unless `--overwrite`.

What is written:

* `--output`: uint8 images, (n, 28, 28) (affnist: (n, 40, 40)).
* `--transforms`: float64 (n, 3, 3) pixel `src_from_dst` matrices of the
  perturbation (`image(p) = original(P p)`): the homographies (mnist; the
  identity at sigma 0), the affine maps into the padded 40x40 source
  (affnist), or the translations (infimnist).
* `--originals`: the uint8 source images (affnist: padded to 40x40).

Sources are `mnist_digit_indices(labels, digit, n, seed)` (a seeded sample
without replacement, as `mnist_digit_subset`). For affnist and infimnist, an
`n` larger than the number of images of the digit reuses sources, drawn with
replacement from a separate stream (`np.random.default_rng([seed, 1])`), as
infiMNIST and affNIST make many variants of each MNIST digit. The
perturbations use `seed`, so `mnist --digit 3 --n 1000 --sigma 0.2 --seed 0`
reproduces the built-in demo set.

Exit status: 0 written; 2 bad arguments, an existing output (without
`--overwrite`) or no readable MNIST (one line on stderr, nothing written).
"""

import contextlib
import os

import numpy as np

from keras_congeal.cli._frameworks import load_frameworks
from keras_congeal.cli._parser import Command
from keras_congeal.io.atomic import atomic_file

__all__ = ["COMMAND", "PROG", "run"]

# The stand-alone program.
PROG = "python -m keras_congeal.data"

DESCRIPTION = "Generate perturbed MNIST, affNIST-like or infiMNIST-like digits."

_DATASETS = ("mnist", "affnist", "infimnist")
_EXTENSIONS = (".npy", ".h5", ".hdf5")


def _add_arguments(parser):
    parser.add_argument("dataset", choices=_DATASETS, help="which protocol")
    parser.add_argument("--digit", type=int, required=True, help="digit 0..9")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="mnist only: perspective noise relative to the image size "
        "(0.1, 0.2, 0.3 in the paper; default 0, plain MNIST)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--output", required=True, help="images, .npy or .h5")
    parser.add_argument("--transforms", help="(n, 3, 3) matrices, .npy or .h5")
    parser.add_argument("--originals", help="unperturbed sources, .npy or .h5")
    parser.add_argument("--mnist", help="mnist.npz or its directory "
                        "(default: $KERAS_CONGEAL_DATA)")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    # The default is the generators' (`keras_congeal.data.perturb.CHUNK_SIZE`),
    # read when the command runs: they import Keras, the parser does not.
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="images processed at a time (default: the generators' "
                        "CHUNK_SIZE, 4096)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_args(parser, args):
    if not 0 <= args.digit <= 9:
        parser.error(f"--digit must be in 0..9, received {args.digit}")
    if args.n <= 0:
        parser.error(f"--n must be positive, received {args.n}")
    if args.chunk_size is not None and args.chunk_size <= 0:
        parser.error(f"--chunk-size must be positive, received {args.chunk_size}")
    if args.sigma is not None and args.dataset != "mnist":
        parser.error(f"--sigma applies to mnist only, not {args.dataset}")
    if args.sigma is not None and not args.sigma >= 0:
        parser.error(f"--sigma must be >= 0, received {args.sigma}")
    outputs = {
        "images": args.output, "transforms": args.transforms, "originals": args.originals
    }
    outputs = {name: path for name, path in outputs.items() if path}
    paths = [os.path.abspath(path) for path in outputs.values()]
    if len(set(paths)) != len(paths):
        parser.error("--output, --transforms and --originals must be different files")
    for name, path in outputs.items():
        if not path.endswith(_EXTENSIONS):
            parser.error(f"{path!r} ({name}) must end with one of {', '.join(_EXTENSIONS)}")
        if os.path.exists(path) and not args.overwrite:
            parser.error(f"{path!r} exists; pass --overwrite to replace it")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            parser.error(f"directory {directory!r} of {path!r} does not exist")
    return outputs


class _Sources:
    """`pool[indices]`, read lazily a slice at a time (as an image array)."""

    def __init__(self, pool, indices):
        self.pool = pool
        self.indices = indices
        self.shape = (len(indices),) + pool.shape[1:]
        self.dtype = pool.dtype

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        return self.pool[self.indices[key]]


@contextlib.contextmanager
def _open_array(path, final_path, name, shape, dtype):
    """A writable array (memmap or HDF5 dataset) at `path`, closed on exit."""
    import h5py

    if final_path.endswith(".npy"):
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()
        del array
        return
    with h5py.File(path, "w") as f:
        chunks = (min(shape[0], 1024),) + tuple(shape[1:])
        yield f.create_dataset(
            name, shape=shape, dtype=dtype, chunks=chunks, compression="gzip"
        )


def _generate(args, sources, chunk_size):
    """Iterator of `(images, matrices, originals)` chunks."""
    from keras_congeal.data import perturb

    if args.dataset == "mnist":
        chunks = perturb.iter_perspective_perturbation(
            sources, args.sigma or 0.0, seed=args.seed, chunk_size=chunk_size
        )
    elif args.dataset == "affnist":
        chunks = perturb.iter_affnist_like(sources, seed=args.seed, chunk_size=chunk_size)
    else:
        chunks = perturb.iter_infimnist_like(sources, seed=args.seed, chunk_size=chunk_size)
    pad = perturb.AFFNIST_PADDING if args.dataset == "affnist" else 0
    starts = range(0, len(sources), chunk_size)
    for start, (images, matrices) in zip(starts, chunks, strict=True):
        originals = sources[start : start + chunk_size]
        yield images, matrices, np.pad(originals, ((0, 0), (pad, pad), (pad, pad)))


def run(parser, args) -> int:
    """Generates the data set; returns the exit status.

    Args:
        parser: the `OneLineParser` that parsed `args` (it reports bad
            arguments, outputs and MNIST files).
        args: the parsed `argparse.Namespace`.
    """
    outputs = _check_args(parser, args)
    # MNIST is read and the count checked before Keras loads (seconds): the
    # data package imports its Keras generators only on first use.
    from keras_congeal.data.mnist import DATA_ENV_VAR, load_mnist, mnist_digit_indices

    if args.mnist is None and not os.environ.get(DATA_ENV_VAR):
        parser.error(
            f"MNIST not found: pass --mnist (mnist.npz or its directory) or set "
            f"{DATA_ENV_VAR} to a directory containing mnist.npz"
        )
    try:
        train, test = load_mnist(args.mnist)
    except (KeyError, OSError, ValueError) as error:
        parser.error(f"cannot read MNIST: {str(error).strip(chr(34) + chr(39)).rstrip('.')}")
    pool, labels = train if args.split == "train" else test
    count = int(np.sum(labels == args.digit))
    if args.n <= count:
        indices = mnist_digit_indices(labels, args.digit, args.n, seed=args.seed)
    elif args.dataset == "mnist":
        parser.error(
            f"--n {args.n} exceeds the {count} images of digit {args.digit} in the "
            f"{args.split} split"
        )
    else:
        candidates = np.flatnonzero(labels == args.digit)
        indices = candidates[np.random.default_rng([args.seed, 1]).integers(0, count, args.n)]
    load_frameworks()  # the generators use Keras
    import keras

    from keras_congeal.data.perturb import AFFNIST_PADDING, CHUNK_SIZE

    chunk_size = args.chunk_size or CHUNK_SIZE
    sources = _Sources(pool, indices)

    size = pool.shape[1] + (2 * AFFNIST_PADDING if args.dataset == "affnist" else 0)
    specs = {
        "images": ((args.n, size, size), np.uint8),
        "transforms": ((args.n, 3, 3), np.float64),
        "originals": ((args.n, size, size), np.uint8),
    }
    progbar = keras.utils.Progbar(args.n, verbose=0 if args.quiet else 1, unit_name="image")
    with contextlib.ExitStack() as stack:
        arrays = {}
        for name, path in outputs.items():
            tmp = stack.enter_context(atomic_file(path))
            arrays[name] = stack.enter_context(_open_array(tmp, path, name, *specs[name]))
        start = 0
        for chunk in _generate(args, sources, chunk_size):
            stop = start + len(chunk[0])
            for name, values in zip(("images", "transforms", "originals"), chunk, strict=True):
                if name in arrays:
                    arrays[name][start:stop] = values
            start = stop
            progbar.update(stop)
    written = ", ".join(f"{name} -> {path}" for name, path in outputs.items())
    print(f"{args.dataset}: {args.n} images of digit {args.digit}: {written}")
    return 0


COMMAND = Command(
    name="data", summary="generate the paper's digit data sets from a local MNIST",
    description=DESCRIPTION, add_arguments=_add_arguments, run=run, doc=__doc__,
    program=PROG,
)
