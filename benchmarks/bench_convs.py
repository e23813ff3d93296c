"""How fast each convolution of the `mnist` model trains on this device, by implementation.

The profile of a training step (`benchmarks.profile_step`) puts 77% of an H200's
time in convolutions, most of them with few channels (the aligner's 7x7
localisation convolutions read 1 and 4 channels), where cuDNN runs far below the
matrix rate. This times, for each convolution shape of the `mnist` model at a
given batch, one forward and backward pass (gradients for the input and the
kernel, as in training) of the same convolution computed three ways:

- `conv`: `jax.lax.conv_general_dilated` in Keras' layout (NHWC, HWIO), what
  `keras.layers.Conv2D` runs;
- `conv_nchw`: the same in NCHW/OIHW (transposes included);
- `patches`: the input's patches (`lax.conv_general_dilated_patches`) times the
  kernel as one matrix product (im2col);
- `shifted`: for few input channels, stride 1 and "VALID" padding, the sum of
  the input's shifted slices times the kernel's scalars (elementwise, fused by
  XLA; the other shapes are skipped).

JAX only. Prints a table and writes JSON (`--output`).

Usage:

    KERAS_BACKEND=jax python -m benchmarks.bench_convs --batch-size 4096 --output convs.json
"""

import sys
import time

from benchmarks import common

# (name, input (H, W, C), kernel size, filters, strides, padding): the mnist
# preset's convolutions (Table 1), per image; the decoder's sub-pixel
# convolutions (`upsample_conv`) are 2x2 kernels with 4x the filters.
SHAPES = [
    ("aligner conv0 7x7 1->4", (28, 28, 1), 7, 4, 1, "VALID"),
    ("aligner conv1 7x7 4->8", (22, 22, 4), 7, 8, 1, "VALID"),
    ("aligner conv2 1x1 8->8", (16, 16, 8), 1, 8, 1, "VALID"),
    ("encoder conv0 3x3/2 1->100", (28, 28, 1), 3, 100, 2, "SAME"),
    ("encoder conv1 3x3/2 100->100", (14, 14, 100), 3, 100, 2, "SAME"),
    ("encoder conv2 3x3/2 100->100", (7, 7, 100), 3, 100, 2, "SAME"),
    ("decoder up1 2x2 100->400", (9, 9, 100), 2, 400, 1, "VALID"),
    ("decoder up2 2x2 100->400", (15, 15, 100), 2, 400, 1, "VALID"),
    ("decoder output 1x1 100->1", (28, 28, 100), 1, 1, 1, "VALID"),
]


def _implementations(jax, lax, jnp):
    def conv(x, k, strides, padding):
        return lax.conv_general_dilated(
            x, k, (strides, strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def conv_nchw(x, k, strides, padding):
        y = lax.conv_general_dilated(
            jnp.transpose(x, (0, 3, 1, 2)),
            jnp.transpose(k, (3, 2, 0, 1)),
            (strides, strides),
            padding,
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        return jnp.transpose(y, (0, 2, 3, 1))

    def patches(x, k, strides, padding):
        size = k.shape[0]
        p = lax.conv_general_dilated_patches(
            x,
            (size, size),
            (strides, strides),
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # (B, H', W', C * size * size), channel-major
        kernel = jnp.transpose(k, (2, 0, 1, 3)).reshape(-1, k.shape[-1])
        return p @ kernel

    def shifted(x, k, strides, padding):
        # Few channels: the sum over the kernel's taps and input channels of
        # shifted input slices times scalars, one elementwise XLA fusion
        # instead of a cuDNN kernel (stride 1, "VALID" only).
        if strides != 1 or padding != "VALID":
            raise NotImplementedError("shifted: stride 1, VALID padding only")
        size, _, channels, _ = k.shape
        h, w = x.shape[1] - size + 1, x.shape[2] - size + 1
        out = 0.0
        for dy in range(size):
            for dx in range(size):
                for c in range(channels):
                    out = out + x[:, dy : dy + h, dx : dx + w, c : c + 1] * k[dy, dx, c]
        return out

    return {"conv": conv, "conv_nchw": conv_nchw, "patches": patches, "shifted": shifted}


def time_step(jax, fn, args, steps, warmup):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = common.script_parser("benchmarks.bench_convs", __doc__)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", help="only the shapes whose name contains one")
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from jax import lax

    implementations = _implementations(jax, lax, jnp)
    rows = []
    for name, (h, w, c), size, filters, strides, padding in SHAPES:
        if args.shapes and not any(part in name for part in args.shapes):
            continue
        for dtype in args.dtypes:
            key = jax.random.PRNGKey(0)
            x = jax.random.normal(key, (args.batch_size, h, w, c), dtype)
            k = jax.random.normal(key, (size, size, c, filters), dtype) * 0.1
            reference = None
            for impl, fn in implementations.items():

                if impl == "shifted" and (strides != 1 or padding != "VALID" or c > 8):
                    continue

                def loss(x, k, fn=fn, strides=strides, padding=padding):
                    y = fn(x, k, strides, padding)
                    return jnp.sum(jnp.tanh(y.astype(jnp.float32)))

                step = jax.jit(jax.grad(loss, argnums=(0, 1)))
                try:
                    seconds = time_step(jax, step, (x, k), args.steps, args.warmup)
                    grads = step(x, k)
                    error = None
                    if reference is None:
                        reference = grads
                    else:
                        error = max(
                            float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                            / (float(jnp.max(jnp.abs(b.astype(jnp.float32)))) + 1e-12)
                            for a, b in zip(grads, reference, strict=True)
                        )
                except Exception as exc:  # an implementation the device cannot run
                    seconds, error = None, f"{type(exc).__name__}: {exc}"[:200]
                out_h = (h - size) // strides + 1 if padding == "VALID" else -(-h // strides)
                out_w = (w - size) // strides + 1 if padding == "VALID" else -(-w // strides)
                flops = 3 * 2 * args.batch_size * out_h * out_w * size * size * c * filters
                rows.append(
                    {
                        "shape": name,
                        "dtype": dtype,
                        "implementation": impl,
                        "ms": None if seconds is None else seconds * 1e3,
                        "tflops": None if seconds is None else flops / seconds / 1e12,
                        "relative_error_vs_conv": error,
                    }
                )
                r = rows[-1]
                shown = "failed"
                if r["ms"] is not None:
                    shown = f"{r['ms']:.3f} ms, {r['tflops']:.1f} TFLOP/s"
                print(f"| {name} | {dtype} | {impl} | {shown} | {error} |", flush=True)
    result = {
        "schema": "keras_congeal.bench_convs/1",
        "run": common.run_record(argv, module="benchmarks.bench_convs"),
        "batch_size": args.batch_size,
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "rows": rows,
    }
    if args.output:
        common.write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
