"""RASL baseline, run through its public NumPy implementation.

RASL (Peng, Ganesh, Wright, Xu, Ma, PAMI 2012) as implemented by the PyPI
package `rasl==0.1.0` (repository welch/rasl, MIT licence; independent of the
paper's authors). It is called as its digit example calls it: one transform
per image starting at the identity with no inset (`frame=0`), the package's
`rasl.rasl(...)` with `normalize=True`, the inner loop's defaults
(`lambda = 1/sqrt(H W)`, inexact ALM), its own stopping rule
(`stop_delta`), and Euclidean transforms, which the package's README
recommends for digits ("the other transformation types succeed in aligning the
digits, but then zoom out to infinity"). The digit example's command line
default `stop_delta=0.005` is our default; `maxiter=1000` is `rasl.rasl`'s.
Nothing is re-tuned.

**What is changed, and why.** Two guards, applied only while `run_rasl`
runs (module attributes of `rasl.jacobian` and `rasl.inner` are swapped and
restored afterwards; site-packages is not edited; not thread-safe):

1. *Zero-norm guard.* `rasl.jacobian.warp_image_gradient` divides each warped
   image and its gradients by the image's L2 norm. An image warped entirely out
   of the frame (or a blank input) has norm 0; 0/0 gives NaN and the inner
   loop's SVD then dies with `LinAlgError: SVD did not converge` (seen on
   perturbed MNIST at sigma >= 10%). While `run_rasl` runs, the name `np` in
   `rasl.jacobian` is a proxy for NumPy whose `linalg.norm` returns 1.0 where
   NumPy returns 0: a zero image stays zero and its "normalised" gradients are
   the raw ones. `np.linalg.norm` is called only there in that module.
2. *Singular-`r` guard.* At the end of `rasl.inner.inner_ialm` each image's
   step is mapped back from the orthonormal basis of its Jacobian by
   `np.linalg.inv(r)`, `q, r = qr(J)`. A zero Jacobian (no ink left in the
   frame) makes `r` singular and `inv` raises `LinAlgError: Singular matrix`.
   In the proxy installed as `np` in `rasl.inner`, `linalg.inv` returns a
   zero matrix when NumPy raises: no step for that image. `np.linalg.inv` is
   called only there in that module.

Both proxies call NumPy unchanged otherwise, so no other result changes; how
often each guard fired is returned in `info["guards"]`. RASL's per-iteration
prints are captured (`verbose=False`), their inner iteration counts parsed
into `info["inner_iterations"]`.

**Dropped images.** `rasl` 0.1.0 itself drops nothing. This wrapper leaves out
of the RASL problem the images whose pixel sum, on RASL's own scale (white =
1), is below `min_ink` (default 1: less than one white pixel of ink, e.g. a
digit perturbed out of the frame), as the project's earlier RASL measurements
describe (NOTES.md); they come back with `kept_mask` false, the identity transform and their
input unchanged as `aligned`. Report it beside any RASL number.
`min_ink=0` keeps every image (the guards then handle blank ones).

**Threads.** With two BLAS threads on a 2-core machine shared with other work,
50 digits took 205 s instead of 3.6 s (NOTES.md). `blas_threads=1` (default)
limits BLAS to one thread during the run with `threadpoolctl` when it is
installed; without it the limit must come from the environment
(`OPENBLAS_NUM_THREADS=1`, set before NumPy is first imported: the benchmark
entry point's job) and a warning says so when it is missing.

**Outputs.** `aligned` is each kept input warped by its final transform with
RASL's own `imtransform` (scikit-image `warp`, bicubic, any output pixel whose
4x4 source neighbourhood leaves the frame set to 0, which erodes ink that
touches the border), in the input's range and not clipped (bicubic may
overshoot slightly), or, with `resample="bilinear"`, with the project's
bilinear zeros-padding convention (as LSC and keras_congeal warp): the
`D o tau` of the paper, not RASL's low-rank `A` (which `rasl.rasl` returns
rescaled by the square root of each input's norm, a scale of no use here).
`transforms` are RASL's `tform.params` (`frame @ matrix`, with an identity
frame here), which scikit-image's `warp` takes as the inverse map from output
`(col, row)` to input `(col, row)`: exactly the project's pixel `src_from_dst`
(checked in `benchmarks/tests/test_baselines_rasl.py` against an independent
warp).

**Behaviour seen on perturbed digits** (digit 3, 200 images, the package's
perspective protocol): at sigma 0.1 RASL ran 77 outer iterations (91 s) and
raised APSNR from 11.2 to 13.1 dB, the guards firing 28 times; at sigma 0.2
its objective rose at the second iteration, so its stopping rule ended the run
there (11.3 to 11.8 dB), with a low-rank part of rank ~90 of 200. On sets of
tens of images the inner loop often stops early on "rank == 0" (strokes go
to the sparse error). Both are the package's own behaviour, left as is.

Cost: every outer iteration runs ~55-60 SVDs of a `(H W) x N` matrix
(~1.7 CPU-s per iteration at N = 250, 14.7 at N = 1000 on this kind of
machine), so keep N modest.
"""

import contextlib
import importlib
import io
import os
import re
import warnings

import numpy as np

from benchmarks.baselines._common import (
    as_image_stack,
    infer_data_range,
    measured_run,
    warp_bilinear,
)
from benchmarks.common import rss_bytes

__all__ = ["TRANSFORMS", "RASL_VERSION", "run_rasl"]

RASL_VERSION = "0.1.0"
TRANSFORMS = ("euclidean", "similarity", "affine", "projective")
_TFORM_CLASSES = {
    "euclidean": "EuclideanTransform",
    "similarity": "SimilarityTransform",
    "affine": "AffineTransform",
    "projective": "ProjectiveTransform",
}
_RESAMPLE = ("rasl", "bilinear")
_INNER_LINE = re.compile(r"completed (\d+) inner iterations")


def _import_rasl():
    try:
        return importlib.import_module("rasl")
    except ImportError as error:
        raise ImportError(
            "The RASL baseline needs the `rasl` package: "
            "`pip install -r benchmarks/baselines/requirements.txt` (rasl==0.1.0)."
        ) from error


class _GuardedLinalg:
    """`numpy.linalg` with the two guards; everything else passes through."""

    def __init__(self, counts):
        self._counts = counts

    def __getattr__(self, name):
        return getattr(np.linalg, name)

    def norm(self, x, *args, **kwargs):
        value = np.linalg.norm(x, *args, **kwargs)
        if np.ndim(value) == 0 and value == 0:
            self._counts["zero_norm"] += 1
            return np.float64(1.0)
        return value

    def inv(self, a):
        try:
            return np.linalg.inv(a)
        except np.linalg.LinAlgError:
            self._counts["singular_r"] += 1
            return np.zeros(np.shape(a), dtype="float64")


class _GuardedNumpy:
    """A stand-in for the `numpy` module whose `linalg` is guarded."""

    def __init__(self, counts):
        self.linalg = _GuardedLinalg(counts)

    def __getattr__(self, name):
        return getattr(np, name)


@contextlib.contextmanager
def _guarded_rasl(counts):
    """Installs the guards in `rasl.jacobian` and `rasl.inner`, then restores."""
    modules = [importlib.import_module(name) for name in ("rasl.jacobian", "rasl.inner")]
    originals = [module.np for module in modules]
    proxy = _GuardedNumpy(counts)
    try:
        for module in modules:
            module.np = proxy
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.np = original


@contextlib.contextmanager
def _blas_limit(blas_threads):
    if blas_threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if os.environ.get("OPENBLAS_NUM_THREADS") != str(blas_threads):
            warnings.warn(
                f"threadpoolctl is not installed and OPENBLAS_NUM_THREADS is not "
                f"{blas_threads}: RASL may run many times slower on a small shared machine. "
                "Install threadpoolctl or set OPENBLAS_NUM_THREADS before importing NumPy.",
                RuntimeWarning,
                stacklevel=3,
            )
        yield
        return
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        yield


def run_rasl(
    images,
    transform="euclidean",
    stop_delta=0.005,
    max_iter=1000,
    min_ink=1.0,
    data_range=None,
    blas_threads=1,
    resample="rasl",
    verbose=False,
    trace_memory=False,
):
    """Aligns `images` with RASL (`rasl==0.1.0`, patched as documented above).

    Args:
        images: array (N, H, W) or (N, H, W, 1), uint8 or float.
        transform: str. `"euclidean"`, `"similarity"`, `"affine"` or
            `"projective"`. Defaults to `"euclidean"` (the package's advice
            for digits).
        stop_delta: float. RASL stops when its objective decreases by less than
            this. Defaults to `0.005` (the package's digit example).
        max_iter: int. Outer iterations at most. Defaults to `1000`
            (`rasl.rasl`'s default).
        min_ink: float. Images whose sum, with white = 1, is below this are
            left out (see the module docstring). Defaults to `1.0`.
        data_range: float or None. The value of white in `images`. Defaults to
            255 for integer images or floats above 1, else 1.
        blas_threads: int or None. BLAS threads during the run (needs
            `threadpoolctl`); `None` leaves them alone. Defaults to `1`.
        resample: str. How `aligned` is made from the final transforms:
            `"rasl"`, RASL's own `imtransform` (bicubic, eroded border), or
            `"bilinear"`, the project's sampler convention (zeros padding), to
            compare methods through the same sampler. Defaults to `"rasl"`.
        verbose: bool. Let RASL print its progress. Defaults to `False`.
        trace_memory: bool. Measure the peak of Python/NumPy allocations with
            `tracemalloc`. Defaults to `False`.

    Returns:
        dict with `aligned` (N, H, W) float64 in the input's range,
        `transforms` (N, 3, 3) float64 pixel `src_from_dst` matrices,
        `kept_mask` (N,) bool, `seconds` (wall clock of the RASL call and the
        final warp), `iterations` (RASL's outer iterations), `peak_memory_bytes`
        (`tracemalloc` peak or None), `max_rss_bytes` (process high-water
        mark), `method` and `info` (settings, guard counts, inner iterations).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"Unknown transform={transform!r}. Expected one of {TRANSFORMS}.")
    if max_iter < 1:
        raise ValueError(f"Expected max_iter >= 1, received max_iter={max_iter}.")
    if resample not in _RESAMPLE:
        raise ValueError(f"Unknown resample={resample!r}. Expected one of {_RESAMPLE}.")
    rasl = _import_rasl()
    if rasl.__version__ != RASL_VERSION:
        warnings.warn(
            f"rasl {rasl.__version__} is installed; the guards were written for "
            f"{RASL_VERSION} and may not apply.",
            RuntimeWarning,
            stacklevel=2,
        )
    tform_class = getattr(rasl, _TFORM_CLASSES[transform])
    rasl_function = importlib.import_module("rasl.rasl").rasl

    stack = as_image_stack(images)
    n, height, width = stack.shape
    white = float(data_range) if data_range is not None else infer_data_range(images)
    kept = stack.reshape(n, -1).sum(axis=1) / white >= min_ink
    kept_index = np.flatnonzero(kept)

    aligned = stack.copy()
    transforms = np.tile(np.eye(3), (n, 1, 1))
    counts = {"zero_norm": 0, "singular_r": 0}
    log = io.StringIO()
    iterations = 0
    with measured_run(trace_memory) as cost:
        if len(kept_index) > 0:
            # RASL sees images with white = 1, as `img_as_float` gives it uint8 data.
            inputs = [stack[i] / white for i in kept_index]
            initial = [tform_class().inset(image.shape, 0) for image in inputs]
            output = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(log)
            with _blas_limit(blas_threads), _guarded_rasl(counts), output:
                _, _, final, iterations = rasl_function(
                    inputs, initial, maxiter=max_iter, stop_delta=stop_delta, normalize=True
                )
            for i, tform in zip(kept_index, final, strict=True):
                transforms[i] = np.asarray(tform.params, dtype="float64")
                if resample == "rasl":
                    aligned[i] = tform.imtransform(stack[i])
            if resample == "bilinear":
                aligned[kept_index] = warp_bilinear(stack[kept_index], transforms[kept_index])

    return {
        "aligned": aligned,
        "transforms": transforms,
        "kept_mask": kept,
        "seconds": cost["seconds"],
        "iterations": int(iterations),
        "peak_memory_bytes": cost["peak_memory_bytes"],
        "max_rss_bytes": rss_bytes(),
        "method": "rasl",
        "info": {
            "transform": transform,
            "stop_delta": stop_delta,
            "max_iter": max_iter,
            "min_ink": min_ink,
            "data_range": white,
            "resample": resample,
            "num_kept": int(kept.sum()),
            "guards": counts,
            "inner_iterations": [int(m) for m in _INNER_LINE.findall(log.getvalue())],
            "rasl_version": rasl.__version__,
        },
    }
