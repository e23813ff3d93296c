"""`python -m benchmarks.baselines` entry point and the shared measures."""

import json

import numpy as np
import pytest

from benchmarks.baselines.__main__ import main
from benchmarks.baselines._common import apsnr, content_scale, ink_kept, warp_bilinear


def _stack(smooth, count=6):
    shifts = np.linspace(-2.0, 2.0, count)
    matrices = np.tile(np.eye(3), (count, 1, 1))
    matrices[:, 0, 2] = shifts
    return np.rint(255 * warp_bilinear(np.repeat(smooth[None], count, 0), matrices)).astype(
        np.uint8
    )


def test_measures_hand_computed():
    images = np.array([[[0.0, 2.0]], [[2.0, 0.0]]])  # every pixel 1 away from the mean
    assert apsnr(images, data_range=255.0) == pytest.approx(10 * np.log10(255.0**2))
    assert apsnr(images / 255.0, data_range=1.0) == pytest.approx(10 * np.log10(255.0**2))
    assert apsnr(np.ones((3, 2, 2))) == float("inf")
    assert ink_kept(images, 0.5 * images) == pytest.approx(0.5)
    zoom = np.array([[[2.0, 0, 0], [0, 2.0, 0], [0, 0, 1]]])  # samples twice as far: shrinks
    assert content_scale(zoom, (28, 28))[0] == pytest.approx(0.5)


def test_cli_lsc(tmp_path, capsys, smooth):
    path = tmp_path / "set.npz"
    np.savez(path, perturbed=_stack(smooth))
    output = tmp_path / "out.npz"
    assert main(["lsc", "--images", str(path), "--key", "perturbed", "--transform",
                 "translation", "--reference", "0", "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "lsc" and summary["images"] == 6 and summary["kept"] == 6
    assert summary["reference"] == 0
    assert summary["apsnr_after"] > summary["apsnr_before"] + 5
    assert 0.9 < summary["ink_kept"] < 1.1
    saved = np.load(output)
    assert saved["aligned"].shape == (6, 28, 28) and saved["transforms"].shape == (6, 3, 3)


def test_cli_rasl(tmp_path, capsys, smooth):
    pytest.importorskip("rasl")
    path = tmp_path / "set.npy"
    np.save(path, _stack(smooth))
    assert main(["rasl", "--images", str(path), "--max-iter", "2", "--limit", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["transform"] == "euclidean" and summary["images"] == 5
    assert summary["guards"] == {"zero_norm": 0, "singular_r": 0}


def test_cli_rejects_bad_combinations(tmp_path, smooth):
    path = tmp_path / "set.npz"
    np.savez(path, perturbed=_stack(smooth))
    with pytest.raises(SystemExit):
        main(["lsc", "--images", str(path)])  # archive without --key
    with pytest.raises(SystemExit):
        main(["rasl", "--images", str(path), "--key", "perturbed", "--transform", "homography"])
