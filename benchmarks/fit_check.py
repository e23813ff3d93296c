"""One `fit_congealer` run on a saved set, its alignment measured: a check of
accuracy beside the speed benchmarks (the same set in float32 and in
mixed_bfloat16, say).

Prints one JSON line: the precision, the training seconds, and
`AlignmentMeter`'s APSNR before and after, ink kept and median content scale.

Usage:

    python -m benchmarks.fit_check SET.npy PRECISION EPOCHS
"""

import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m benchmarks.fit_check SET.npy float32|mixed_bfloat16 EPOCHS",
              file=sys.stderr)
        return 2
    path, precision, epochs = argv[0], argv[1], int(argv[2])
    from keras_congeal.datasets import as_float_images
    from keras_congeal.metrics import AlignmentMeter
    from keras_congeal.training import CongealSettings, fit_congealer

    images = np.load(path)
    start = time.perf_counter()
    model, _ = fit_congealer(images, CongealSettings(precision=precision, epochs=epochs),
                             verbose=0)
    seconds = time.perf_counter() - start
    x = as_float_images(images, 255.0)
    result = model.align(x, batch_size=1024)
    meter = AlignmentMeter(data_range=1.0)
    meter.update(x, result["aligned"], result["transforms"])
    print(json.dumps({"precision": precision, "train_seconds": seconds, **meter.summary()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
