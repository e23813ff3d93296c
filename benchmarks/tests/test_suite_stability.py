"""Tiny runs of `benchmarks.stability` (needs mnist.npz)."""

import json

import pytest

from benchmarks import common, stability

try:
    MNIST = common.resolve_mnist()
except (FileNotFoundError, ValueError):
    MNIST = None

pytestmark = pytest.mark.skipif(MNIST is None, reason="mnist.npz not found")


def test_loss_spikes_against_the_lowest_epoch_before():
    # 1.3 > 1.25 x 1.0; 1.2 is not; 2.0 > 1.25 x 0.9 (the lowest so far).
    assert stability.loss_spikes([1.0, 1.3, 1.2, 0.9, 1.1, 2.0], 1.25) == [1, 5]
    assert stability.loss_spikes([], 1.25) == []


def test_runs_write_one_file_each_skip_done_ones_and_report(tmp_path, capsys):
    args = ["--digits", "3", "--sigmas", "0.2", "--n", "32", "--epochs", "2",
            "--optimizers", "adam", "adam-cosine", "--output-dir", str(tmp_path)]
    assert stability.main(args) == 0
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["digit3_sigma0.2_adam-cosine_seed0.json", "digit3_sigma0.2_adam_seed0.json"]
    entry = json.loads((tmp_path / files[0]).read_text())
    assert entry["schema"] == stability.SCHEMA and entry["optimizer"] == "adam-cosine"
    assert entry["train_seed"] == 0
    assert entry["n"] == 32 and entry["epochs_run"] == 2 and not entry["guard_stopped"]
    assert len(entry["history"]["loss"]) == 2 and 0 < entry["ink_kept"] <= 1.5
    assert entry["run"]["command"].startswith("python -m benchmarks.stability")
    before = (tmp_path / files[1]).stat().st_mtime_ns
    capsys.readouterr()
    assert stability.main(args) == 0  # both done: skipped, then the report
    assert (tmp_path / files[1]).stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert "| 3 | 0.2 | adam-cosine | 0 |" in out and "adam: 1 runs" in out


def test_adam_cosine_is_the_default_schedule():
    import keras

    optimizer = stability.make_optimizer("adam-cosine", 1e-3, 40)
    config = optimizer.get_config()["learning_rate"]["config"]
    assert config["decay_steps"] == 40 and config["alpha"] == pytest.approx(0.1)
    optimizer.build([keras.Variable([0.0])])
    optimizer.iterations.assign(40)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(1e-4)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="Unknown optimizer 'sgd'"):
        stability.make_optimizer("sgd", 1e-3, 10)
