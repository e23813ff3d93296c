"""Tests of the LFW protocol script (`benchmarks/lfw.py`): crop geometry,
landmark mapping and error, and a tiny end-to-end run on real LFW frames
(skipped when the data is not found)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import lfw

REPO = Path(__file__).resolve().parents[2]


def _lfw_dir():
    candidates = []
    if os.environ.get("KERAS_CONGEAL_DATA"):
        candidates.append(Path(os.environ["KERAS_CONGEAL_DATA"]) / "lfw4")
    candidates.append(REPO.parent / "shared" / "data" / "lfw4")
    for candidate in candidates:
        if (candidate / "landmarks.tsv").is_file():
            return candidate
    return None


# === Geometry ===


@pytest.mark.parametrize("init", [0.0, 0.15, 0.30])
@pytest.mark.parametrize("crop_size", [32, 64])
def test_crop_matrix_maps_crop_edges_to_box_corners(init, crop_size):
    matrix = lfw.crop_matrix(150, crop_size, init)
    x0, y0, x1, y1 = lfw.box_corners(150, init)
    side = 150 / 2.2 * (1 + init)
    np.testing.assert_allclose([x1 - x0, y1 - y0], [side, side])
    np.testing.assert_allclose([(x0 + x1) / 2, (y0 + y1) / 2], [74.5, 74.5])
    edges = np.array([[-0.5, -0.5, 1.0], [crop_size - 0.5, crop_size - 0.5, 1.0],
                      [crop_size - 0.5, -0.5, 1.0]])
    mapped = edges @ matrix.T
    np.testing.assert_allclose(mapped[:, :2], [[x0, y0], [x1, y1], [x1, y0]], atol=1e-12)
    # The crop's centre is the frame's centre.
    centre = matrix @ [(crop_size - 1) / 2, (crop_size - 1) / 2, 1.0]
    np.testing.assert_allclose(centre[:2], [74.5, 74.5], atol=1e-12)


def test_crop_frames_samples_the_frame_at_mapped_points():
    # Linear ramps are reproduced exactly by bilinear sampling: channel 0
    # holds x / 149, channel 1 holds y / 149 of each frame pixel.
    ys, xs = np.mgrid[0:150, 0:150].astype("float64")
    frame = np.stack([xs / 149, ys / 149, np.full_like(xs, 0.5)], axis=-1)
    size, init = 40, 0.30
    matrix = lfw.crop_matrix(150, size, init)
    crops = lfw.crop_frames(frame[None].astype("float32"), matrix, size)
    assert crops.shape == (1, size, size, 3) and crops.dtype == np.float32
    gy, gx = np.mgrid[0:size, 0:size].astype("float64")
    src = np.einsum("ij,jhw->ihw", matrix, np.stack([gx, gy, np.ones_like(gx)]))
    np.testing.assert_allclose(crops[0, ..., 0], src[0] / 149, atol=2e-5)
    np.testing.assert_allclose(crops[0, ..., 1], src[1] / 149, atol=2e-5)
    np.testing.assert_allclose(crops[0, ..., 2], 0.5, atol=1e-6)


def test_crop_frames_shows_a_box_drawn_on_the_frame():
    # A white square exactly on the initial box, black elsewhere: the crop is
    # white inside, apart from the one-pixel border that blends with black.
    init, size = 0.15, 32
    x0, y0, x1, y1 = lfw.box_corners(150, init)
    ys, xs = np.mgrid[0:150, 0:150]
    inside = (xs >= np.ceil(x0)) & (xs <= np.floor(x1)) & (ys >= np.ceil(y0)) & (
        ys <= np.floor(y1))
    frame = np.where(inside, 255, 0).astype(np.uint8)[..., None].repeat(3, axis=-1)
    crops = lfw.crop_frames(frame[None], lfw.crop_matrix(150, size, init), size)
    assert crops[0, 1:-1, 1:-1].min() == pytest.approx(1.0)
    # The same box cropped 30% larger shows black around the square.
    wider = lfw.crop_frames(frame[None], lfw.crop_matrix(150, size, 0.45), size)
    assert wider[0, 0].max() == 0.0 and wider[0, size // 2, size // 2].min() == 1.0


def test_landmarks_round_trip_through_the_crop_matrix():
    rng = np.random.default_rng(0)
    points = rng.uniform(40, 110, size=(5, 3, 2))
    matrix = lfw.crop_matrix(150, 64, 0.15)
    identity = np.tile(np.eye(3), (5, 1, 1))
    in_crop = lfw.aligned_landmarks(points, matrix, identity)
    back = lfw.map_points(np.broadcast_to(matrix, (5, 3, 3)), in_crop)
    np.testing.assert_allclose(back, points, atol=1e-10)
    # A point on the box's top-left corner lands on the crop's top-left edge.
    x0, y0, _, _ = lfw.box_corners(150, 0.15)
    corner = lfw.aligned_landmarks(np.array([[[x0, y0]]]), matrix, identity[:1])
    np.testing.assert_allclose(corner[0, 0], [-0.5, -0.5], atol=1e-10)


def test_aligned_landmarks_use_the_inverse_of_b_times_t():
    # T translates the sampling point by (+3, -2) in the crop: the aligned
    # image shows crop content at p + (3, -2) at p, so a landmark at crop
    # point q appears at q - (3, -2).
    matrix = lfw.crop_matrix(150, 64, 0.0)
    translate = np.array([[[1.0, 0, 3.0], [0, 1.0, -2.0], [0, 0, 1.0]]])
    frame_point = np.array([[[80.0, 70.0]]])
    crop_point = lfw.aligned_landmarks(frame_point, matrix, np.eye(3)[None])
    aligned = lfw.aligned_landmarks(frame_point, matrix, translate)
    np.testing.assert_allclose(aligned - crop_point, [[[-3.0, 2.0]]], atol=1e-10)


# === Landmark error ===


def test_landmark_error_of_identical_points_is_zero():
    points = np.tile([[[10.0, 20.0], [30.0, 20.0], [20.0, 30.0]]], (6, 1, 1))
    result = lfw.landmark_error(points)
    assert result["error_percent"] == 0.0
    assert result["eye_distance"] == pytest.approx(20.0)
    assert result["images"] == 6


def test_landmark_error_of_a_known_spread():
    # Two images: every landmark is 1 pixel above its mean in one and 1 below
    # in the other (spread 1); eyes 10 pixels apart: error 1 / 10 = 10%.
    base = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 6.0]])
    points = np.stack([base + [0.0, 1.0], base - [0.0, 1.0]])
    result = lfw.landmark_error(points)
    assert result["error_percent"] == pytest.approx(10.0)
    np.testing.assert_allclose(result["spread_pixels"], [1.0, 1.0, 1.0])
    # Only the nose moves (by 3 px each way): (0 + 0 + 3) / 3 / 10 = 10%.
    points = np.stack([base, base])
    points[0, 2] += [3.0, 0.0]
    points[1, 2] -= [3.0, 0.0]
    result = lfw.landmark_error(points)
    assert result["error_percent"] == pytest.approx(10.0)
    np.testing.assert_allclose(result["spread_percent"], [0.0, 0.0, 30.0])


def test_landmark_error_is_invariant_to_a_shared_similarity():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(20, 3, 2)) + [[0.0, 0.0], [12.0, 0.0], [6.0, 8.0]]
    angle, scale = 0.3, 2.5
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)],
                                 [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T + [5.0, -7.0]
    assert lfw.landmark_error(moved)["error_percent"] == pytest.approx(
        lfw.landmark_error(points)["error_percent"])


def test_similarity_oracle_undoes_known_similarities():
    # One shape under 30 random similarities (and a little noise): the
    # fitted similarities bring the error from ~20% to the noise level.
    rng = np.random.default_rng(2)
    shape = np.array([[20.0, 25.0], [44.0, 25.0], [32.0, 40.0]])
    moved = []
    for _ in range(30):
        angle, scale, shift = rng.normal(0, 0.2), np.exp(rng.normal(0, 0.1)), rng.normal(0, 3, 2)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)],
                                     [np.sin(angle), np.cos(angle)]])
        moved.append((shape - 32) @ rotation.T + 32 + shift + rng.normal(0, 0.05, (3, 2)))
    moved = np.stack(moved)
    assert lfw.landmark_error(moved)["error_percent"] > 10
    matrices = lfw.similarity_to_mean(moved)
    fitted = np.einsum("nij,nkj->nki", matrices[:, :2, :2], moved) + matrices[:, None, :2, 2]
    assert lfw.landmark_error(fitted)["error_percent"] < 0.5
    np.testing.assert_allclose(matrices[:, 0, 0], matrices[:, 1, 1])  # similarities
    np.testing.assert_allclose(matrices[:, 0, 1], -matrices[:, 1, 0])


def test_landmark_error_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        lfw.landmark_error(np.zeros((3, 2)))


# === Data and end to end ===


def test_read_landmarks_scales_to_the_150_pixel_frames():
    data = _lfw_dir()
    if data is None:
        pytest.skip("LFW data not found (set KERAS_CONGEAL_DATA)")
    landmarks = lfw.read_landmarks(data)
    # 483 + 39 + 47 + 139 annotated frames (the data README says 707).
    assert len(landmarks) == 708
    points = landmarks["George_W_Bush_0001.jpg"]
    # landmarks.tsv: canthus_rr (97.3552, 116.6469), canthus_ll (153.6448,
    # 121.4038), nose (119.2896, 143.8668), in the 250x250 frame.
    np.testing.assert_allclose(
        points, 0.6 * np.array([[97.3552, 116.6469], [153.6448, 121.4038],
                                [119.2896, 143.8668]]))


def test_end_to_end_tiny_run(tmp_path, capsys):
    data = _lfw_dir()
    if data is None:
        pytest.skip("LFW data not found (set KERAS_CONGEAL_DATA)")
    argv = ["--data", str(data), "--subjects", "Jennifer_Capriati", "--limit", "8",
            "--epochs", "1", "--min-steps", "0", "--size", "32",
            "--methods", "input", "oracle-similarity", "keras_congeal",
            "--inits", "0", "--monitor-size", "0", "--output-dir", str(tmp_path)]
    assert lfw.main(argv) == 0
    result = json.loads((tmp_path / "lfw.json").read_text())
    assert result["schema"] == lfw.SCHEMA
    assert result["config"]["size"] == 32
    assert result["config"]["congeal_settings"]["preset"] == "lfw"
    run = result["runs"][0]
    for key in ("command", "machine", "versions", "keras", "started"):
        assert key in run
    assert set(result["results"]) == {"Jennifer_Capriati/init0/input",
                                      "Jennifer_Capriati/init0/oracle-similarity",
                                      "Jennifer_Capriati/init0/keras_congeal"}
    for method in ("input", "oracle-similarity", "keras_congeal"):
        entry = result["results"][f"Jennifer_Capriati/init0/{method}"]
        for key in ("apsnr", "landmark_error_percent", "content_scale_median", "seconds",
                    "images", "images_with_landmarks", "crop_matrix", "landmarks"):
            assert key in entry, key
        assert entry["images"] == 8
        assert 0 < entry["images_with_landmarks"] <= 8
        assert np.isfinite(entry["apsnr"]) and entry["landmark_error_percent"] > 0
        assert len(entry["landmarks"]["spread_percent"]) == 3
    assert result["results"]["Jennifer_Capriati/init0/input"]["content_scale_median"] == 1.0
    congealed = result["results"]["Jennifer_Capriati/init0/keras_congeal"]
    assert congealed["epochs"] == 1 and congealed["settings"]["distortion_target"] == "batch-mean"
    # The trajectory: the landmark error after the epoch, as measured at the end.
    assert [p["step"] for p in congealed["trajectory"]] == [1]
    assert congealed["trajectory"][0]["landmark_error"] == pytest.approx(
        congealed["landmark_error_percent"], rel=1e-4)
    # The similarity oracle aligns the landmarks better than the input.
    oracle = result["results"]["Jennifer_Capriati/init0/oracle-similarity"]
    assert oracle["landmark_error_percent"] < entry["landmark_error_percent"] or \
        oracle["landmark_error_percent"] < result["results"][
            "Jennifer_Capriati/init0/input"]["landmark_error_percent"]
    with np.load(tmp_path / "lfw_means.npz") as means:
        assert means["Jennifer_Capriati/init0/keras_congeal"].shape == (32, 32, 3)
        assert means["Jennifer_Capriati/frame_mean"].shape == (150, 150, 3)
    assert (tmp_path / "lfw_tables.md").is_file()
    assert "| Jennifer_Capriati | 0 | input |" in capsys.readouterr().out

    # --resume skips the finished cells and keeps them.
    assert lfw.main([*argv, "--resume", "--methods", "input"]) == 0
    resumed = json.loads((tmp_path / "lfw.json").read_text())
    assert len(resumed["runs"]) == 2
    assert resumed["results"] == result["results"]


def test_setting_overrides_are_parsed_and_checked(tmp_path):
    assert lfw._parse_setting("transform=similarity") == ("transform", "similarity")
    assert lfw._parse_setting("learning_rate=1e-4") == ("learning_rate", 1e-4)
    for bad in ("foo=1", "epochs=3", "transform"):
        with pytest.raises(SystemExit):
            lfw.main(["--setting", bad, "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        lfw.main(["--setting", "learning_rate=-1", "--output-dir", str(tmp_path)])


def test_command_line_errors(tmp_path):
    with pytest.raises(SystemExit):
        lfw.main(["--methods", "nope", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        lfw.main(["--data", str(tmp_path), "--output-dir", str(tmp_path)])
