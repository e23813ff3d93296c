"""Tests of keras_congeal.io: reading image sets, atomic writes."""

import os

import h5py
import numpy as np
import pytest
from PIL import Image

from keras_congeal.io import (
    AtomicOutputDir,
    ImagesView,
    InputError,
    NpyWriter,
    atomic_file,
    open_images,
    read_image_file,
    scan_values,
    write_npy_streaming,
)


def _images(n=10, size=(12, 9), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size), dtype=np.uint8)


def _write_pngs(directory, images, names=None):
    directory.mkdir(exist_ok=True)
    names = names or [f"im{i:02d}.png" for i in range(len(images))]
    for name, image in zip(names, images, strict=False):
        Image.fromarray(image).save(directory / name)
    return names


# === Reading ===


@pytest.mark.parametrize("shape,dtype", [((5, 8, 6), np.uint8), ((5, 8, 6, 3), np.float32),
                                         ((5, 8, 6, 1), np.float64)])
def test_npy_is_memory_mapped(tmp_path, shape, dtype):
    images = np.random.default_rng(0).random(shape).astype(dtype)
    np.save(tmp_path / "x.npy", images)
    with open_images(tmp_path / "x.npy") as source:
        assert isinstance(source.images, np.memmap)
        np.testing.assert_array_equal(source.images, images)
        assert source.filenames is None and source.kind == "npy"
        assert source.image_shape == (8, 6, shape[3] if len(shape) == 4 else 1)


def test_npz_stored_member_is_memory_mapped(tmp_path):
    images = _images()
    np.savez(tmp_path / "x.npz", images=images, labels=np.arange(10))
    with open_images(tmp_path / "x.npz", key="images") as source:
        assert isinstance(source.images, np.memmap)
        np.testing.assert_array_equal(source.images, images)
        assert source.name.endswith("x.npz[images]")


def test_npz_compressed_member_is_unpacked_then_deleted(tmp_path):
    images = _images()
    np.savez_compressed(tmp_path / "x.npz", images)
    source = open_images(tmp_path / "x.npz")  # one array: no key needed
    assert isinstance(source.images, np.memmap)
    scratch = source.images.filename
    np.testing.assert_array_equal(source.images, images)
    source.close()
    assert not os.path.exists(scratch)


def test_npz_key_errors_list_the_arrays(tmp_path):
    np.savez(tmp_path / "x.npz", images=_images(), labels=np.arange(3))
    with pytest.raises(InputError, match="several arrays.*images, labels.*--key"):
        open_images(tmp_path / "x.npz")
    with pytest.raises(InputError, match="no array 'digits'; available: images, labels"):
        open_images(tmp_path / "x.npz", key="digits")


def test_hdf5_is_lazy_and_keys_are_listed(tmp_path):
    images = _images()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("train/images", data=images)
        f.create_dataset("labels", data=np.arange(10))
    with open_images(tmp_path / "x.h5", key="/train/images") as source:
        assert isinstance(source.images, h5py.Dataset)
        np.testing.assert_array_equal(source.images[2:5], images[2:5])
        assert source.key == "train/images"
    assert not source.images.id.valid  # closed
    with pytest.raises(InputError, match="several datasets \\(labels, train/images\\)"):
        open_images(tmp_path / "x.h5")
    with pytest.raises(InputError, match="no dataset 'images'; available: labels, train/images"):
        open_images(tmp_path / "x.h5", key="images")
    with pytest.raises(InputError, match="shape \\(10,\\)"):
        open_images(tmp_path / "x.h5", key="labels")


@pytest.mark.parametrize("mode,channels", [("L", None), ("RGB", 3)])
def test_folder_sorted_with_filenames(tmp_path, mode, channels):
    images = _images(4)
    if channels:
        images = np.stack([images, 255 - images, images // 2], axis=-1)
    names = ["b.png", "a.png", "c.jpg", "d.PNG"]
    _write_pngs(tmp_path / "set", images[:2], names[:2])
    Image.fromarray(images[2]).save(tmp_path / "set" / "c.jpg", quality=100)
    Image.fromarray(images[3]).save(tmp_path / "set" / "d.PNG")
    (tmp_path / "set" / ".hidden").write_text("ignored")
    (tmp_path / "set" / "subdir").mkdir()
    with open_images(tmp_path / "set") as source:
        assert source.filenames == ["a.png", "b.png", "c.jpg", "d.PNG"]
        assert source.images.dtype == np.uint8
        assert source.images.shape == (4, 12, 9) + ((3,) if channels else ())
        np.testing.assert_array_equal(source.images[0], images[1])  # a.png
        np.testing.assert_array_equal(source.images[3], images[3])


@pytest.mark.parametrize("setup,message", [
    ("text", "notes.txt: not a PNG or JPEG file"),
    ("fake_png", "broken.png: not a readable PNG or JPEG image"),
    ("sizes", "is 9x12: all images must have one size"),
    ("modes", "all images must be grey or all colour"),
    ("empty", "no PNG or JPEG files"),
])
def test_bad_folders(tmp_path, setup, message):
    folder = tmp_path / "set"
    folder.mkdir()
    if setup != "empty":
        _write_pngs(folder, _images(2))
    if setup == "text":
        (folder / "notes.txt").write_text("hello")
    elif setup == "fake_png":
        (folder / "broken.png").write_bytes(b"not a png at all")
    elif setup == "sizes":
        Image.fromarray(_images(1, (5, 5))[0]).save(folder / "z.png")
    elif setup == "modes":
        Image.fromarray(np.zeros((12, 9, 3), np.uint8)).save(folder / "z.png")
    with pytest.raises(InputError, match=message):
        open_images(folder)


@pytest.mark.parametrize("array,message", [
    (np.zeros((0, 8, 8), np.uint8), "no images"),
    (np.zeros((8, 8), np.uint8), "expected images \\(N, height, width\\)"),
    (np.zeros((2, 8, 8, 2), np.uint8), "2 channels"),
    (np.zeros((2, 8, 8), np.int64), "unsupported dtype int64"),
])
def test_bad_arrays(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InputError, match=message):
        open_images(tmp_path / "x.npy")


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        open_images(tmp_path / "missing.npy")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a .npy, .npz or HDF5 file"):
        open_images(tmp_path / "notes.txt")
    np.save(tmp_path / "cut.npy", _images(100))
    with open(tmp_path / "cut.npy", "r+b") as f:
        f.truncate(500)
    with pytest.raises(InputError, match="cut.npy: cannot read the .npy array"):
        open_images(tmp_path / "cut.npy")
    np.save(tmp_path / "x.npy", _images())
    with pytest.raises(InputError, match="--key applies to .npz and HDF5"):
        open_images(tmp_path / "x.npy", key="images")
    Image.fromarray(_images(1)[0]).save(tmp_path / "one.png")
    with pytest.raises(InputError, match="a single image; pass the directory"):
        open_images(tmp_path / "one.png")


def test_scan_values_finds_nan_in_a_later_chunk():
    images = np.random.default_rng(0).random((50, 4, 4)).astype(np.float32)
    assert scan_values(images, "x", chunk_size=8) == (float(images.min()), float(images.max()))
    images[37, 1, 2] = np.nan
    with pytest.raises(InputError, match="x: image 37 contains NaN"):
        scan_values(images, "x", chunk_size=8)
    assert scan_values(np.zeros((3, 4, 4), np.uint8), "x") is None


def test_scan_values_refuses_float_images_beyond_one():
    images = np.zeros((2, 4, 4), np.float32)
    images[1, 2, 3] = 255.0
    with pytest.raises(InputError, match="must lie in \\[0, 1\\], found values in \\[0, 255\\]"):
        scan_values(images, "x")


def test_images_view():
    images = np.arange(10 * 2 * 3).reshape(10, 2, 3)
    view = ImagesView(images, count=6, add_channel=True)
    assert len(view) == 6 and view.shape == (6, 2, 3, 1) and view.ndim == 4
    np.testing.assert_array_equal(view[4:100], images[4:6, ..., None])
    np.testing.assert_array_equal(view[np.array([1, 5])], images[[1, 5], ..., None])
    np.testing.assert_array_equal(view[-1], images[5, ..., None])
    with pytest.raises(IndexError):
        view[np.array([2, 6])]
    with pytest.raises(IndexError):
        view[6]
    assert ImagesView(images, count=100).shape == (10, 2, 3)


def test_read_image_file_converts_channels(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert read_image_file(tmp_path / "red.png").shape == (4, 5, 3)
    grey = read_image_file(tmp_path / "red.png", channels=1)
    assert grey.shape == (4, 5) and grey.max() == 76  # ITU-R 601 luma of pure red


# === Writing ===


def test_write_npy_streaming(tmp_path):
    chunks = [np.full((3, 2, 2), i, np.uint8) for i in range(3)]
    write_npy_streaming(tmp_path / "x.npy", chunks, (9, 2, 2), np.uint8)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.concatenate(chunks))
    assert os.listdir(tmp_path) == ["x.npy"]


def test_npy_writer_checks_the_count(tmp_path):
    with pytest.raises(ValueError, match="2 of 3 rows were written"):
        with NpyWriter(tmp_path / "x.npy", (3, 2), np.float32) as out:
            out.write(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="4 rows written, the array holds 3"):
        with NpyWriter(tmp_path / "y.npy", (3, 2), np.float32) as out:
            out.write(np.zeros((4, 2)))


def test_streaming_write_failure_leaves_nothing(tmp_path):
    def chunks():
        yield np.zeros((2, 2))
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_npy_streaming(tmp_path / "x.npy", chunks(), (4, 2), np.float64)
    assert os.listdir(tmp_path) == []


def test_atomic_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with atomic_file(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


def test_atomic_output_dir_new(tmp_path):
    out = AtomicOutputDir(tmp_path / "deep" / "out").check()
    assert not os.path.exists(tmp_path / "deep")  # check() writes nothing
    partial = out.begin()
    assert partial == str(tmp_path / "deep" / "out.partial")
    for name in ("result.txt", "scratch.txt"):
        with open(out.file(name), "w") as f:
            f.write(name)
    out.commit(drop=["scratch.txt"])
    assert sorted(os.listdir(tmp_path / "deep")) == ["out"]
    assert os.listdir(tmp_path / "deep" / "out") == ["result.txt"]


def test_atomic_output_dir_existing_and_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        AtomicOutputDir(tmp_path / "out").check()
    out = AtomicOutputDir(tmp_path / "out", overwrite=True).check()
    out.begin()
    (tmp_path / "out.partial" / "new.txt").write_text("new")
    assert (tmp_path / "out" / "old.txt").exists()  # kept until the commit
    out.commit()
    assert os.listdir(tmp_path) == ["out"]
    assert os.listdir(tmp_path / "out") == ["new.txt"]


def test_atomic_output_dir_may_be_an_empty_directory(tmp_path):
    (tmp_path / "out").mkdir()
    out = AtomicOutputDir(tmp_path / "out").check()
    out.begin()
    (tmp_path / "out.partial" / "new.txt").write_text("new")
    out.commit()
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["new.txt"]


def test_atomic_output_dir_partial_and_resume(tmp_path):
    (tmp_path / "out.partial").mkdir()
    with pytest.raises(InputError, match="unfinished run is there; pass --resume"):
        AtomicOutputDir(tmp_path / "out").check()
    with pytest.raises(InputError, match="unfinished run is there .*remove it"):
        AtomicOutputDir(tmp_path / "out", resumable=False).check()
    out = AtomicOutputDir(tmp_path / "out", resume=True).check()
    assert out.resuming
    assert out.begin() == str(tmp_path / "out.partial")
    assert not AtomicOutputDir(tmp_path / "other", resume=True).check().resuming


def test_atomic_output_dir_refuses_bad_places(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        AtomicOutputDir(tmp_path / "file", overwrite=True).check()
    with pytest.raises(InputError, match="exists and is not a directory"):
        AtomicOutputDir(tmp_path / "file" / "out").check()
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="refusing to write over the input"):
        AtomicOutputDir(tmp_path, overwrite=True, protect=[tmp_path / "data"]).check()


def test_atomic_file_takes_a_fresh_name_and_follows_the_umask(tmp_path):
    target = tmp_path / "a.bin"
    old = os.umask(0o022)
    try:
        with atomic_file(target) as tmp:
            assert os.path.exists(tmp)  # created empty: the name is taken
            assert os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as f:
                f.write(b"x")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"x"
    assert os.stat(target).st_mode & 0o777 == 0o644


def test_one_atomic_writer_and_one_input_error():
    """The data generator and the ONNX export write through `keras_congeal.io`."""
    from keras_congeal import io
    from keras_congeal.cli import data as data_command
    from keras_congeal.data import demo
    from keras_congeal.io import images

    assert data_command.atomic_file is io.atomic_file and demo.atomic_file is io.atomic_file
    assert images.InputError is io.InputError
