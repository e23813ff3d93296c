import numpy as np
import pytest

from keras_congeal.data import (
    load_mnist,
    mnist_digit_indices,
    mnist_digit_subset,
    resolve_mnist_path,
)


def test_load_from_file_directory_and_env(fake_mnist, monkeypatch):
    monkeypatch.delenv("KERAS_CONGEAL_DATA", raising=False)
    (x_train, y_train), (x_test, y_test) = load_mnist(fake_mnist)
    assert x_train.shape == (400, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (400,) and x_test.shape == (100, 28, 28)
    from_file = load_mnist(fake_mnist / "mnist.npz")
    np.testing.assert_array_equal(from_file[1][1], y_test)
    monkeypatch.setenv("KERAS_CONGEAL_DATA", str(fake_mnist))
    np.testing.assert_array_equal(load_mnist()[0][0], x_train)


def test_missing_mnist_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_CONGEAL_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="KERAS_CONGEAL_DATA"):
        load_mnist()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_mnist_path(tmp_path / "nowhere")
    monkeypatch.setenv("KERAS_CONGEAL_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="KERAS_CONGEAL_DATA.*mnist.npz"):
        load_mnist()


def test_missing_keys(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((1, 28, 28)))
    with pytest.raises(KeyError, match="y_train"):
        load_mnist(tmp_path)


def test_digit_indices():
    labels = np.array([3, 1, 3, 3, 0, 3, 2, 3])
    indices = mnist_digit_indices(labels, 3, 4, seed=0)
    assert len(set(indices.tolist())) == 4  # without replacement
    assert np.all(labels[indices] == 3)
    np.testing.assert_array_equal(indices, mnist_digit_indices(labels, 3, 4, seed=0))
    # A smaller subset is a prefix of a larger one with the same seed.
    np.testing.assert_array_equal(mnist_digit_indices(labels, 3, 2, seed=0), indices[:2])
    assert not np.array_equal(
        mnist_digit_indices(labels, 3, 5, seed=0), mnist_digit_indices(labels, 3, 5, seed=1)
    )


@pytest.mark.parametrize(
    "digit, n, match",
    [(3, 6, "only 5 exist"), (3, 0, "positive"), (10, 1, "0..9"), (2.0, 1, "integer")],
)
def test_digit_indices_errors(digit, n, match):
    labels = np.array([3, 1, 3, 3, 0, 3, 2, 3])
    with pytest.raises(ValueError, match=match):
        mnist_digit_indices(labels, digit, n)


def test_digit_subset(fake_mnist):
    subset = mnist_digit_subset(4, 25, seed=3, path=fake_mnist)
    (x_train, y_train), (x_test, _) = load_mnist(fake_mnist)
    assert subset.shape == (25, 28, 28) and subset.dtype == np.uint8
    np.testing.assert_array_equal(subset, x_train[mnist_digit_indices(y_train, 4, 25, 3)])
    assert mnist_digit_subset(4, 10, split="test", path=fake_mnist).shape == (10, 28, 28)
    with pytest.raises(ValueError, match="only 40 exist"):
        mnist_digit_subset(4, 41, path=fake_mnist)
    with pytest.raises(ValueError, match="split"):
        mnist_digit_subset(4, 1, split="valid", path=fake_mnist)


def test_train_then_test_subset(fake_mnist):
    # 40 fours in the fake training set, 10 in its test set.
    (x_train, y_train), (x_test, y_test) = load_mnist(fake_mnist)
    both = mnist_digit_subset(4, 25, seed=3, split="train+test", path=fake_mnist)
    np.testing.assert_array_equal(both, mnist_digit_subset(4, 25, seed=3, path=fake_mnist))
    more = mnist_digit_subset(4, 46, seed=3, split="train+test", path=fake_mnist)
    np.testing.assert_array_equal(more[:40], x_train[mnist_digit_indices(y_train, 4, 40, 3)])
    np.testing.assert_array_equal(more[40:], x_test[mnist_digit_indices(y_test, 4, 6, 3)])
    with pytest.raises(ValueError, match="n=51 .* only 50 exist in the training and test"):
        mnist_digit_subset(4, 51, split="train+test", path=fake_mnist)


@pytest.mark.data
def test_real_mnist(mnist_dir):
    (x_train, y_train), (x_test, y_test) = load_mnist(mnist_dir)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert int(np.sum(y_train == 3)) == 6131
    threes = mnist_digit_subset(3, 6000, path=mnist_dir)
    assert threes.shape == (6000, 28, 28) and threes.dtype == np.uint8
