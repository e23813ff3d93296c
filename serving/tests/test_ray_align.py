"""`ray-align` on a local Ray cluster (`ray.init(num_cpus=2)`, one per module).

The reference is the single-process `align` command on the same files: the
shards, concatenated in manifest order, must be bit for bit its output.
"""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import ray
from PIL import Image

from keras_congeal_serving.__main__ import main
from keras_congeal_serving.errors import InputError, TooLargeError
from keras_congeal_serving.ray_align import ray_align
from keras_congeal_serving.testing import expected_translation, translation_matrices

pytestmark = pytest.mark.ray


# The cluster's processes (its workers write the shards) inherit the umask that
# ray.init runs under; not the usual 0o022, so that a hard-coded mode shows.
CLUSTER_UMASK = 0o002


@pytest.fixture(scope="module")
def ray_address():
    previous = os.umask(CLUSTER_UMASK)
    try:
        context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.umask(previous)
    yield context.address_info["address"]
    ray.shutdown()


def save_pngs(folder, images, prefix="img"):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{prefix}{index:02d}.png")


def read_shards(output, manifest):
    """Concatenated aligned images, transforms and filenames of the finished shards."""
    aligned, transforms, names = [], [], []
    for shard in manifest["shards"]:
        if shard["status"] == "failed":
            continue
        folder = output / shard["path"]
        aligned.append(np.load(folder / "aligned.npy"))
        transforms.append(np.load(folder / "transforms.npy"))
        if (folder / "filenames.json").exists():
            names += json.loads((folder / "filenames.json").read_text())
    return aligned, transforms, names


def align_command(model, path, output, *extra):
    assert (
        main(["align", str(model), str(path), "--output", str(output), "--no-progress", *extra])
        == 0
    )
    return np.load(output / "aligned.npy"), np.load(output / "transforms.npy")


def test_matches_the_align_command(ray_address, grey_model, tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    save_pngs(data / "pngs", rng.integers(0, 256, (7, 8, 8), dtype=np.uint8))
    np.save(data / "a.npy", rng.integers(0, 256, (10, 8, 8), dtype=np.uint8))
    with h5py.File(data / "b.h5", "w") as f:
        f.create_dataset("images", data=rng.random((5, 8, 8, 1)))  # float64 in [0, 1]
    np.savez_compressed(data / "c.npz", images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8))

    output = tmp_path / "ray"
    manifest = ray_align(
        grey_model,
        str(data / "**" / "*"),
        output,
        num_workers=2,
        batch_size=2,
        shard_size=3,
        progress=False,
    )
    assert manifest["complete"] and manifest["bad_files"] == []
    assert manifest["count"] == 7 + 10 + 5 + 6
    # 7 images -> 3 shards; a.npy 10 rows -> 4; b.h5 5 rows -> 2; c.npz one stream -> 1.
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 1, 3, 3, 3, 1, 3, 2, 6]
    assert manifest["shards_done"] == 10 and manifest["providers"] == ["CPUExecutionProvider"]
    aligned, transforms, names = read_shards(output, manifest)

    ref, ref_t = align_command(grey_model, data / "pngs", tmp_path / "ref_pngs")
    np.testing.assert_array_equal(np.concatenate(aligned[:3]), ref)
    np.testing.assert_array_equal(np.concatenate(transforms[:3]), ref_t)
    assert names == [f"pngs/img{i:02d}.png" for i in range(7)]
    for name, shards, extra in (
        ("a.npy", slice(3, 7), ()),
        ("b.h5", slice(7, 9), ()),
        ("c.npz", slice(9, 10), ()),
    ):
        ref, ref_t = align_command(grey_model, data / name, tmp_path / f"ref_{name}", *extra)
        got = np.concatenate(aligned[shards])
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        np.testing.assert_array_equal(got, ref, err_msg=name)
        np.testing.assert_array_equal(np.concatenate(transforms[shards]), ref_t, err_msg=name)
    assert all(t.dtype == np.float64 for t in transforms)
    shard = json.loads((output / "shards" / "000004" / "shard.json").read_text())
    assert shard["source"] == {"file": str(data / "a.npy"), "key": None, "rows": [3, 6]}


def test_rerun_skips_finished_shards_and_redoes_the_rest(ray_address, grey_model, tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (8, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "d.npy", images)
    output = tmp_path / "out"
    kwargs = dict(shard_size=2, batch_size=2, num_workers=2, progress=False)
    first = ray_align(grey_model, tmp_path / "d.npy", output, **kwargs)
    assert first["shards_done"] == 4 and first["shards_skipped"] == 0
    shards = output / "shards"
    # A killed run: shard 000002 never finished and left its temporary directory.
    lost = np.load(shards / "000002" / "aligned.npy")
    for path in (shards / "000002").iterdir():
        path.unlink()
    (shards / "000002").rmdir()
    (shards / ".000002.partial-killed").mkdir()
    old = 1_000_000_000
    for name in ("000000", "000001", "000003"):
        for path in (shards / name).iterdir():
            os.utime(path, ns=(old, old))

    second = ray_align(grey_model, tmp_path / "d.npy", output, **kwargs)
    assert second["shards_skipped"] == 3 and second["shards_done"] == 1
    assert second["aligned_this_run"] == 2 and second["count"] == 8
    assert [s["status"] for s in second["shards"]] == ["skipped", "skipped", "done", "skipped"]
    for name in ("000000", "000001", "000003"):  # not rewritten
        assert {p.stat().st_mtime_ns for p in (shards / name).iterdir()} == {old}
    assert sorted(p.name for p in shards.iterdir()) == ["000000", "000001", "000002", "000003"]
    np.testing.assert_array_equal(np.load(shards / "000002" / "aligned.npy"), lost)
    aligned, transforms, _ = read_shards(output, second)
    np.testing.assert_array_equal(np.concatenate(aligned), expected_translation(images, (1, 0)))
    np.testing.assert_array_equal(np.concatenate(transforms), translation_matrices((1, 0), 8))
    # Another shard size is another job: refused, nothing touched.
    with pytest.raises(InputError, match="another model, input"):
        ray_align(grey_model, tmp_path / "d.npy", output, **{**kwargs, "shard_size": 3})


def _truncated_png(path):
    """Header fine (passes the header check), pixel data cut: fails when decoded."""
    noise = np.random.default_rng(4).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:60])


def test_bad_files_are_listed_not_fatal(ray_address, grey_model, tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    data = tmp_path / "data"
    save_pngs(data, images)
    (data / "img01.png").write_bytes(b"not really a png")
    _truncated_png(data / "img03.png")
    Image.new("L", (9, 8)).save(data / "wide.png")
    Image.new("L", (10, 11)).save(data / "big.png")  # over --max-image-pixels 100
    (data / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    good = [0, 2, 4]
    output = tmp_path / "out"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_congeal_serving",
            "ray-align",
            grey_model,
            str(data),
            "--output",
            str(output),
            "--address",
            ray_address,
            "--shard-size",
            "4",
            "--max-image-pixels",
            "100",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 3, process.stderr
    assert "5 bad files" in process.stderr.splitlines()[-1], process.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    reasons = {os.path.basename(b["file"]): b["reason"] for b in manifest["bad_files"]}
    assert sorted(reasons) == ["big.png", "broken.npy", "img01.png", "img03.png", "wide.png"]
    assert reasons["big.png"] == (
        "10x11 image has 110 pixels; at most 100 are decoded per image (--max-image-pixels)"
    )
    assert "not a PNG or JPEG image" in reasons["img01.png"]
    assert "cannot decode image" in reasons["img03.png"]
    assert reasons["wide.png"] == "image is 8x9 (HxW); expected 8x8"
    assert "cannot read .npy" in reasons["broken.npy"]
    assert manifest["complete"] and manifest["count"] == 3
    aligned, transforms, names = read_shards(output, manifest)
    assert names == [f"img{i:02d}.png" for i in good]
    np.testing.assert_array_equal(
        np.concatenate(aligned), expected_translation(images[good], (1, 0))
    )
    # The bad files of a finished shard are kept in its shard.json: a rerun lists them too.
    rerun = ray_align(grey_model, data, output, shard_size=4, progress=False)
    assert rerun["shards_skipped"] == 2 and rerun["shards_done"] == 0
    assert sorted(os.path.basename(b["file"]) for b in rerun["bad_files"]) == sorted(reasons)


def test_command_line(ray_address, grey_model, digits, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "keras_congeal_serving", "ray-align", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    process = run(grey_model, tmp_path / "nothing*.npy", "--output", tmp_path / "out")
    assert process.returncode == 1
    assert process.stderr.splitlines() == [
        f"keras-congeal-serving: error: {tmp_path / 'nothing*.npy'}: no such file or "
        "directory, and no file matches this pattern"
    ]
    assert not (tmp_path / "out").exists()
    process = run(grey_model, tmp_path, "--output", tmp_path / "out", "--num-workers", "0")
    assert process.returncode == 2 and "--num-workers" in process.stderr
    process = run(grey_model, tmp_path, "--output", tmp_path / "out", "--max-set-pixels", "0")
    assert process.returncode == 2 and "--max-set-pixels must be >= 1" in process.stderr
    # A GPU provider on a cluster without GPUs: refused before any worker starts.
    np.save(tmp_path / "d.npy", digits)
    args = (grey_model, tmp_path / "d.npy", "--output", tmp_path / "out", "--no-progress")
    process = run(*args, "--address", ray_address, "--providers", "cuda")
    assert process.returncode == 1, process.stderr
    assert process.stderr.splitlines()[-1] == (
        "keras-congeal-serving: error: each worker asks for 1 GPU but the Ray cluster has 0 "
        "(--providers, --gpus-per-worker)"
    )
    assert not (tmp_path / "out").exists()
    # Every file aligned: exit 0 and a summary line.
    process = run(*args, "--address", ray_address, "--shard-size", "2")
    assert process.returncode == 0, process.stderr
    assert process.stderr.splitlines()[-1] == (
        "5 images in 3 shards (3 aligned now, 0 already done, 0 failed), 0 bad files "
        f"-> {tmp_path / 'out'}/manifest.json"
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    aligned, transforms, _ = read_shards(tmp_path / "out", manifest)
    np.testing.assert_array_equal(np.concatenate(aligned), expected_translation(digits, (1, 0)))


def test_any_size_model_takes_the_size_of_the_first_readable_image(
    ray_address, any_size_model, tmp_path
):
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"unreadable")
    images = rng.integers(0, 256, (2, 6, 10), dtype=np.uint8)
    Image.fromarray(images[0]).save(data / "b.png")
    Image.fromarray(images[1]).save(data / "c.png")
    Image.new("L", (8, 8)).save(data / "d.png")
    manifest = ray_align(any_size_model, data, tmp_path / "out", shard_size=4, progress=False)
    reasons = {os.path.basename(b["file"]): b["reason"] for b in manifest["bad_files"]}
    assert reasons == {
        "a.png": "not a PNG or JPEG image",
        "d.png": "image is 8x8 (HxW); expected 6x10",
    }
    aligned, _, names = read_shards(tmp_path / "out", manifest)
    assert names == ["b.png", "c.png"]
    np.testing.assert_array_equal(aligned[0], expected_translation(images, (1, 0)))


def test_pixel_budgets_and_float_range(ray_address, grey_model, bomb_png, tmp_path):
    """Headers are read before decoding: a file over --max-image-pixels is a bad file, a
    shard over --max-set-pixels fails with its files listed; 0-255 floats are refused."""
    images = np.random.default_rng(6).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    data = tmp_path / "data"
    save_pngs(data, images)
    (data / "bomb.png").write_bytes(bomb_png(5000, 4000))  # a header, no pixel data
    np.save(data / "floats.npy", images.astype(np.float32))  # 0-255 floats
    # Shards (names sorted): [bomb, img00, img01], [img02..img04], [img05], floats.npy
    # rows 0:3 and 3:6.
    manifest = ray_align(
        grey_model, data, tmp_path / "out", shard_size=3, max_set_pixels=150, progress=False
    )
    statuses = [s["status"] for s in manifest["shards"]]
    assert statuses == ["done", "failed", "done", "failed", "failed"]
    assert not manifest["complete"] and manifest["count"] == 3
    assert (manifest["max_image_pixels"], manifest["max_set_pixels"]) == (4096 * 4096, 150)
    assert len(manifest["bad_files"]) == 6  # floats.npy once per shard
    reasons = {os.path.basename(b["file"]): b["reason"] for b in manifest["bad_files"]}
    assert sorted(reasons) == ["bomb.png", "floats.npy", "img02.png", "img03.png", "img04.png"]
    assert reasons["bomb.png"] == (
        "5000x4000 image has 20000000 pixels; at most 16777216 are decoded per image "
        "(--max-image-pixels)"
    )
    set_error = (
        f"{data}: 192 pixels in all; at most 150 are decoded per set (--max-set-pixels); "
        "send fewer or smaller images (shard 000001; use a smaller --shard-size)"
    )
    assert manifest["shards"][1]["error"] == set_error
    assert {reasons[f"img0{i}.png"] for i in (2, 3, 4)} == {set_error}
    assert "float images must lie in [0, 1], found values in [" in reasons["floats.npy"]
    aligned, _, names = read_shards(tmp_path / "out", manifest)
    assert names == ["img00.png", "img01.png", "img05.png"]
    np.testing.assert_array_equal(
        np.concatenate(aligned), expected_translation(images[[0, 1, 5]], (1, 0))
    )
    with pytest.raises(InputError, match="--max-set-pixels must be >= 1"):
        ray_align(grey_model, data, tmp_path / "other", max_set_pixels=0)
    assert not (tmp_path / "other").exists()
    assert issubclass(TooLargeError, InputError)


def test_outputs_follow_the_umask(ray_address, grey_model, tmp_path):
    """Shard directories (made by the workers) and every file get the umask's permissions,
    as align's output does (not mkdtemp's 0700 nor mkstemp's 0600)."""
    images = np.random.default_rng(7).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    save_pngs(tmp_path / "data", images)
    np.save(tmp_path / "data" / "d.npy", images)
    previous = os.umask(CLUSTER_UMASK)  # the driver writes job.json and manifest.json
    try:
        ray_align(grey_model, tmp_path / "data", tmp_path / "out", shard_size=2, progress=False)
    finally:
        os.umask(previous)
    paths = [tmp_path / "out", *(tmp_path / "out").rglob("*")]
    # out, job.json, manifest.json, shards/; 2 image shards of 4 files, 2 array shards of 3
    assert len(paths) == 1 + 3 + 2 * (1 + 4) + 2 * (1 + 3)
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~CLUSTER_UMASK
        assert path.stat().st_mode & 0o777 == expected, path
