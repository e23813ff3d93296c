"""Summary lines of the results that `benchmarks/gpu_issue10.sh` leaves in a folder:
throughput (bench_*.json), profiles (profile_*.json), the million and affNIST runs,
the float32/bfloat16 check and the protocol shards' progress.

Usage: python -m benchmarks.gpu_summary FOLDER
"""

import json
import sys
from pathlib import Path


def _bench(path, data):
    # bench_training's own table (images/s, ms/step, fraction of the matmul rate).
    print(f"{path.stem}: {data.get('flops_per_image', 0) / 1e6:.1f} MFLOP/image, matmul "
          f"{data.get('matmul_flops_per_second', 0) / 1e12:.1f} TFLOP/s")
    print("\n".join("  " + line for line in data["table"].splitlines()))


def _profile(path, data):
    print(f"{path.stem}: batch {data['batch_size']}, {data['images_per_second']:.0f} img/s")
    print("\n".join("  " + line for line in data["table"].splitlines()[:60]))


def _million(path, m):
    s = m["summary"]
    memory = m.get("memory", {})
    peak = memory.get("peak_bytes") or 0
    print(f"{path.stem}: n {m['config']['n']}, generate {m['generate_seconds']:.1f} s, train "
          f"{m['train_seconds']:.1f} s ({m['train_images_per_second'] or 0:.0f} img/s), align "
          f"{m['align_seconds']:.1f} s ({m['align_images_per_second']:.0f} img/s; metrics "
          f"{m['align_metrics_seconds']:.1f} s), train+align {m['train_plus_align_seconds']:.1f} "
          f"s, APSNR {s['apsnr_before']:.2f} -> {s['apsnr_after']:.2f}, ink "
          f"{s['ink_kept']:.3f}, scale {s['content_scale_median']:.3f}, peak host memory "
          f"{peak / 2**30:.2f} GiB")
    print("  memory: " + json.dumps(memory)[:1500])


def main(argv=None) -> int:
    folder = Path((sys.argv[1:] if argv is None else argv)[0])
    for path in sorted(folder.glob("profile_*.json")):
        _profile(path, json.loads(path.read_text()))
    for path in sorted(folder.glob("bench_*.json")):
        _bench(path, json.loads(path.read_text()))
    for name in ("million", "million_small", "affnist"):
        path = folder / f"{name}.json"
        if path.exists():
            _million(path, json.loads(path.read_text()))
    for precision in ("float32", "mixed_bfloat16"):
        path = folder / f"quick_{precision}.json"
        if path.exists() and path.stat().st_size:
            r = json.loads(path.read_text().strip().splitlines()[-1])
            print(f"quick {precision}: APSNR {r['apsnr_before']:.2f} -> {r['apsnr_after']:.3f}"
                  f" dB, ink {r['ink_kept']:.3f}, scale {r['content_scale_median']:.3f}, "
                  f"train {r['train_seconds']:.1f} s")
    for log in sorted(folder.glob("protocol_digit*.log")) + sorted(folder.glob("rasl_digit*.log")):
        lines = [line for line in log.read_text().splitlines() if "APSNR" in line]
        print(f"{log.stem}: {len(lines)} entries; last: {lines[-1] if lines else '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
