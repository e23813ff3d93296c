"""Least-squares congealing (LSC) baseline, in NumPy.

What it solves: the paper's Eq. (3), after Cox et al. (CVPR 2008, ICCV 2009):
every image `I_i` is aligned to one reference (template) `T` by minimising

    sum_x (I_i(M_i x) - T(x))^2

over a transform `M_i` of the chosen family (`src_from_dst`, pixel
coordinates; see `_common`). The minimiser is the **inverse-compositional
Lucas-Kanade** algorithm (Baker & Matthews, IJCV 2004), a Gauss-Newton method:

* the steepest-descent images `SD = grad(T) . dW/dp` (at `p = 0`) and the
  Gauss-Newton matrix `H = SD^T SD` depend on the template only, so the normal
  equations of all N images share one `n x n` matrix (`n` = number of
  parameters), inverted once per level;
* each iteration, for all images at once: warp every image by its current
  matrix (bilinear, zero outside), residuals `e_i = I_i(M_i x) - T(x)`, steps
  `dp_i = H^-1 SD^T e_i` (one `(N, HW) @ (HW, n)` product), and the
  inverse-compositional update `M_i <- M_i inv(W(dp_i))`.

Time and memory are linear in N: `O(N H W n)` per iteration and a few
`(N, H, W)` float64 arrays (the warp works in chunks of images).

The parameters are offsets from the identity in centred coordinates
`u = (x - cx) / s`, `v = (y - cy) / s`, `s = (max(H, W) - 1) / 2` (for
conditioning only: a Gauss-Newton step does not depend on a linear
re-parameterisation). Families, as in `keras_congeal.ops.geometry`:
`translation` (2), `similarity` (4), `affine` (6), `homography` (8).

**Coarse to fine** (`blur_sigmas`): the whole Gauss-Newton loop runs once per
level, on the inputs and the template smoothed by a Gaussian of that standard
deviation in pixels (zero padding), from coarse to fine; the last level is
normally 0 (no smoothing). There is no subsampling: on 28x28 digits a blurred
full-resolution stack is cheap and keeps the matrices in one pixel frame.
Smoothing widens the basin of convergence of Lucas-Kanade on thin strokes.

**Reference** (`reference`):

* `None` or `"closest-to-mean"` (default): the input image closest in L1 to
  the mean input image, as the `"mean"` strategy of `keras_congeal.reference`,
  **among the images with at least half the median ink** (sum of absolute
  values). Without that floor the rule picks a blank image on perturbed digits
  (digit 3, sigma 0.2: two of 200 images were empty and both were the closest
  to the mean; L1 medoids pick them too), and LSC toward a blank template
  does not move. To compare on exactly the package's reference, pass its
  index;
* an `int`: that image;
* `"mean"`: the mean input image itself (blurred by the misalignment);
* an array (H, W): that template.

**Congealing flavour** (`update_reference=True`, `rounds >= 2`): after each
round the template is replaced by the mean of the aligned set and the next
round (the full coarse-to-fine schedule) starts from the current transforms.
For image `i` with the others fixed, Cox et al.'s all-pairs objective
`sum_{j != i} ||I_j o p_j - I_i o p_i||^2` equals `(N - 1)` times the squared
distance to the mean of the others plus a constant, so this is that objective
with three simplifications, chosen to keep the update one batched product:
the mean includes image `i` itself (weight `1/N`); the Gauss-Newton matrix is
that of the mean image's gradient rather than the sum of the individual
aligned images' gradients; and all images are updated together (Jacobi)
rather than one after another.

**Step control** (`step_halvings`): a step that raises an image's squared
error is halved, up to `step_halvings` times; if it still does, that image
stops at this level. The mean residual therefore never increases within a
level (without it, the finest level raised the residual on perturbed digits).

**Known weakness** (the paper: LSC's "alignment performance tend to be
worse"): least squares with zero padding rewards shrinking content or moving
it out of the frame when it overlaps the reference poorly. Digit 3, 200
images, perspective sigma 0.2: affine LSC raised APSNR from 11.3 to 16.9 dB
(oracle 14.1) while keeping only 41% of the ink; translation LSC reached
13.8 dB keeping 91%. Report ink kept and content scale beside its APSNR.

Not done: no robust (non-quadratic) error, no photometric normalisation; no
image is dropped (`kept_mask` is all true).
"""

import numpy as np
from scipy import ndimage

from benchmarks.baselines._common import as_image_stack, measured_run, warp_bilinear
from benchmarks.common import rss_bytes

__all__ = ["TRANSFORMS", "run_lsc", "choose_reference", "params_to_offset_matrix"]

TRANSFORMS = {"translation": 2, "similarity": 4, "affine": 6, "homography": 8}
_REFERENCE_STRATEGIES = ("closest-to-mean", "mean")
_MIN_INK_FRACTION = 0.5


def choose_reference(images, reference=None):
    """The template `(H, W)` and its index (`None` unless it is an input).

    Args:
        images: float array (N, H, W).
        reference: `None`, `"closest-to-mean"`, `"mean"`, an `int` or an
            array (H, W). See the module docstring.

    Returns:
        `(template, index)`.
    """
    n, height, width = images.shape
    if reference is None or (isinstance(reference, str) and reference == "closest-to-mean"):
        flat = images.reshape(n, -1)
        distance = np.abs(flat - flat.mean(axis=0)).sum(axis=1)
        # Only images with at least half the median ink compete: on perturbed
        # digits a (nearly) blank image is the closest in L1 to the blurred
        # mean (measured: digit 3, sigma 0.2), and a blank template aligns
        # nothing.
        ink = np.abs(flat).sum(axis=1)
        distance[ink < _MIN_INK_FRACTION * np.median(ink)] = np.inf
        index = int(np.argmin(distance))
        return images[index].copy(), index
    if isinstance(reference, str):
        if reference == "mean":
            return images.mean(axis=0), None
        raise ValueError(
            f"Unknown reference={reference!r}. Expected None, one of "
            f"{_REFERENCE_STRATEGIES}, an image index or an image array."
        )
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        index = int(reference)
        if not -n <= index < n:
            raise ValueError(f"Reference index {index} is out of range for {n} images.")
        index %= n
        return images[index].copy(), index
    template = np.asarray(reference, dtype="float64")
    if template.ndim == 3 and template.shape[-1] == 1:
        template = template[..., 0]
    if template.shape != (height, width):
        raise ValueError(
            f"The reference image has shape {template.shape}; expected ({height}, {width})."
        )
    return template, None


def params_to_offset_matrix(params, transform):
    """Offset parameters (N, n) -> matrices `I + delta` (N, 3, 3).

    Same layout as `keras_congeal.ops.geometry` (in whatever frame the
    parameters are expressed).
    """
    params = np.asarray(params, dtype="float64")
    n = params.shape[0]
    delta = np.zeros((n, 9))
    if transform == "translation":
        delta[:, [2, 5]] = params
    elif transform == "similarity":
        a, b, tx, ty = params.T
        delta[:, 0], delta[:, 1], delta[:, 2] = a, -b, tx
        delta[:, 3], delta[:, 4], delta[:, 5] = b, a, ty
    elif transform == "affine":
        delta[:, :6] = params
    else:
        delta[:, :8] = params
    return delta.reshape(n, 3, 3) + np.eye(3)


def _warp_jacobian(u, v, transform):
    """dW/dp at p = 0 for points (u, v): two arrays (P, n), for u' and v'."""
    one, zero = np.ones_like(u), np.zeros_like(u)
    if transform == "translation":
        ju, jv = [one, zero], [zero, one]
    elif transform == "similarity":
        ju, jv = [u, -v, one, zero], [v, u, zero, one]
    elif transform == "affine":
        ju, jv = [u, v, one, zero, zero, zero], [zero, zero, zero, u, v, one]
    else:
        ju = [u, v, one, zero, zero, zero, -u * u, -u * v]
        jv = [zero, zero, zero, u, v, one, -u * v, -v * v]
    return np.stack(ju, axis=1), np.stack(jv, axis=1)


def _blur(images, sigma):
    if sigma <= 0:
        return images
    axes_sigma = (0.0, sigma, sigma) if images.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(images, axes_sigma, mode="constant", cval=0.0)


def _align_level(sources, template, matrices, transform, iterations, tol, halvings, frame):
    """Inverse-compositional Gauss-Newton at one smoothing level.

    Returns the matrices, the number of iterations run and the mean squared
    residual before the first and after each iteration.
    """
    n = sources.shape[0]
    scale, norm_from_pix, pix_from_norm, u, v, corners = frame
    grad_y, grad_x = np.gradient(template)  # per pixel, along rows / columns
    ju, jv = _warp_jacobian(u, v, transform)
    # d T / d u = s d T / d x, since x = cx + s u.
    steepest = (grad_x.ravel() * scale)[:, None] * ju + (grad_y.ravel() * scale)[:, None] * jv
    hessian = steepest.T @ steepest
    # A flat template (no gradient) gives a singular H: the pseudo-inverse
    # then leaves the unconstrained directions alone.
    gain = steepest @ np.linalg.pinv(hessian, hermitian=True)  # (HW, n)
    target = template.ravel()

    matrices = matrices.copy()
    residual = warp_bilinear(sources, matrices).reshape(n, -1) - target
    error = np.mean(residual**2, axis=1)
    active = np.ones(n, dtype=bool)
    history = [float(np.mean(error))]
    done = 0
    for _ in range(iterations):
        if not active.any():
            break
        done += 1
        steps = residual[active] @ gain  # (n_active, n): all normal equations at once
        pending = np.flatnonzero(active)
        largest = 0.0
        for _ in range(halvings + 1):
            step_pix = pix_from_norm @ params_to_offset_matrix(steps, transform) @ norm_from_pix
            candidate = matrices[pending] @ np.linalg.inv(step_pix)
            new_residual = warp_bilinear(sources[pending], candidate).reshape(len(pending), -1)
            new_residual -= target
            new_error = np.mean(new_residual**2, axis=1)
            accept = new_error <= error[pending]
            taken = pending[accept]
            matrices[taken] = candidate[accept]
            residual[taken] = new_residual[accept]
            error[taken] = new_error[accept]
            # Largest displacement of an image corner caused by an accepted step.
            if accept.any():
                moved = step_pix[accept] @ corners
                moved = moved[:, :2] / moved[:, 2:3]
                largest = max(largest, float(np.max(np.abs(moved - corners[:2]))))
            pending, steps = pending[~accept], steps[~accept] * 0.5
            if len(pending) == 0:
                break
        # An image whose step still raised its error after all halvings is at a
        # (local) minimum for this level: it stops here.
        active[pending] = False
        history.append(float(np.mean(error)))
        if largest < tol:
            break
    return matrices, done, history


def run_lsc(
    images,
    reference=None,
    transform="affine",
    iterations=50,
    blur_sigmas=(2.0, 1.0, 0.0),
    update_reference=False,
    rounds=1,
    tol=1e-3,
    step_halvings=4,
    init=None,
    trace_memory=False,
):
    """Least-squares congealing of `images` toward a reference.

    Args:
        images: array (N, H, W) or (N, H, W, 1), any real range (uint8 or float).
        reference: `None` (image closest in L1 to the mean), `"closest-to-mean"`,
            `"mean"`, an image index or an array (H, W). Defaults to `None`.
        transform: str. `"translation"`, `"similarity"`, `"affine"` or
            `"homography"`. Defaults to `"affine"`.
        iterations: int. Maximum Gauss-Newton iterations per level (and round).
            Defaults to 50.
        blur_sigmas: sequence of float. Gaussian smoothing of each
            coarse-to-fine level, pixels, coarse first. Defaults to
            `(2.0, 1.0, 0.0)`; `(0.0,)` is single-scale.
        update_reference: bool. Replace the template by the mean aligned
            image between rounds (needs `rounds >= 2`). Defaults to `False`.
        rounds: int. Number of coarse-to-fine passes. Defaults to 1.
        tol: float. A level stops when no image corner moves by more than
            this many pixels in an iteration. Defaults to `1e-3`.
        step_halvings: int. A step that raises an image's squared error is
            halved up to this many times, then the image stops at this level.
            Defaults to 4.
        init: array (N, 3, 3) or None. Initial `src_from_dst` pixel matrices.
            Defaults to identities.
        trace_memory: bool. Measure the peak of Python/NumPy allocations with
            `tracemalloc` (slower). Defaults to `False`.

    Returns:
        dict with `aligned` (N, H, W) float64 in the input's range (each input
        warped bilinearly by its matrix, zero outside), `transforms` (N, 3, 3)
        float64 pixel `src_from_dst`, `kept_mask` (N,) bool (all true),
        `seconds`, `iterations` (Gauss-Newton iterations, all levels and
        rounds), `peak_memory_bytes` (`tracemalloc` peak or None),
        `max_rss_bytes` (process high-water mark), `method` and `info`
        (reference index, template, per-level iterations and mean squared
        residuals).
    """
    if transform not in TRANSFORMS:
        raise ValueError(
            f"Unknown transform={transform!r}. Expected one of {sorted(TRANSFORMS)}."
        )
    if iterations < 1 or rounds < 1:
        raise ValueError(
            f"Expected iterations >= 1 and rounds >= 1, received iterations={iterations}, "
            f"rounds={rounds}."
        )
    if step_halvings < 0:
        raise ValueError(f"Expected step_halvings >= 0, received {step_halvings}.")
    if update_reference and rounds < 2:
        raise ValueError("update_reference=True needs rounds >= 2 (it acts between rounds).")
    sigmas = tuple(float(s) for s in blur_sigmas) or (0.0,)
    if any(s < 0 for s in sigmas):
        raise ValueError(f"blur_sigmas must be >= 0, received {blur_sigmas}.")

    with measured_run(trace_memory) as cost:
        stack = as_image_stack(images)
        n, height, width = stack.shape
        template, index = choose_reference(stack, reference)
        if init is None:
            matrices = np.tile(np.eye(3), (n, 1, 1))
        else:
            matrices = np.array(init, dtype="float64")
            if matrices.shape != (n, 3, 3):
                raise ValueError(
                    f"Expected `init` of shape ({n}, 3, 3), received {matrices.shape}."
                )
        frame = _frame(height, width)

        per_level, history = [], []
        for round_index in range(rounds):
            if round_index > 0 and update_reference:
                template = warp_bilinear(stack, matrices).mean(axis=0)
            for sigma in sigmas:
                matrices, done, level_history = _align_level(
                    _blur(stack, sigma), _blur(template, sigma), matrices, transform,
                    iterations, tol, step_halvings, frame,
                )
                per_level.append({"round": round_index, "sigma": sigma, "iterations": done})
                history.append(level_history)
        aligned = warp_bilinear(stack, matrices)

    return {
        "aligned": aligned,
        "transforms": matrices,
        "kept_mask": np.ones(n, dtype=bool),
        "seconds": cost["seconds"],
        "iterations": int(sum(level["iterations"] for level in per_level)),
        "peak_memory_bytes": cost["peak_memory_bytes"],
        "max_rss_bytes": rss_bytes(),
        "method": "lsc",
        "info": {
            "transform": transform,
            "reference_index": index,
            "template": template,
            "blur_sigmas": sigmas,
            "rounds": rounds,
            "update_reference": update_reference,
            "levels": per_level,
            "mean_squared_residual": history,
        },
    }


def _frame(height, width):
    """Centred, scaled coordinates used for the parameters."""
    scale = (max(height, width) - 1) / 2.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    norm_from_pix = np.array([[1 / scale, 0, -cx / scale], [0, 1 / scale, -cy / scale], [0, 0, 1]])
    pix_from_norm = np.linalg.inv(norm_from_pix)
    ys, xs = np.mgrid[0:height, 0:width]
    u = (xs.ravel() - cx) / scale
    v = (ys.ravel() - cy) / scale
    corners = np.array([[0, width - 1, 0, width - 1], [0, 0, height - 1, height - 1], [1, 1, 1, 1]],
                       dtype="float64")
    return scale, norm_from_pix, pix_from_norm, u, v, corners
