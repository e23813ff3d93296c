"""What the `congeal` command does once its arguments are checked: train a
`Congealer` on an image set, align the set, and write the outputs (see
`keras_congeal.cli` for the list) atomically.

Steps, each finished before the next starts:

1. cheap checks of the output directory and the input (nothing written);
2. the settings (on `--resume`, those of the interrupted run), the reference
   image, the model built on the image shape (images too small fail here);
3. `DIR.partial/` is created with `settings.json` and `run.json` (the input's
   identity); training writes a `BackupAndRestore` backup and one line of
   history per epoch there;
4. `model.keras`, `aligned.npy`, `transforms.npy`, the figures and
   `report.json` are written into it, the scratch files removed, and it is
   renamed to `DIR`.

A run that is killed leaves only `DIR.partial/`; `--resume` continues it
from its last finished epoch.
"""

import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import threading
import time
import warnings

import keras

from keras_congeal.callbacks import EpochBackupAndRestore
from keras_congeal.cli._aligning import align_into
from keras_congeal.cli._inputs import images_nhwc
from keras_congeal.cli._report import (
    report_header,
    summary_lines,
    write_figures,
    write_json,
    write_report,
)
from keras_congeal.io import InputError, atomic_file
from keras_congeal.models.saving import save_without_optimizer
from keras_congeal.presets import get_preset, preset_for_size
from keras_congeal.reference import STRATEGIES, ReferenceWarning, choose_reference
from keras_congeal.training import (
    CongealSettings,
    build_congealer,
    fit_congealer,
    is_main_process,
    local_devices,
    process_index_and_count,
)

__all__ = ["train_and_align"]

SETTINGS_FILE = "settings.json"
RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
BACKUP_DIR = "backup"
# Scratch entries of DIR.partial/, removed before it becomes DIR.
SCRATCH = (RUN_FILE, HISTORY_FILE, BACKUP_DIR)


class _EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per finished epoch (its logs and wall time)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        entry.update({key: float(value) for key, value in (logs or {}).items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


@contextlib.contextmanager
def _interrupts_held(second_stops=False):
    """Holds a Ctrl-C (SIGINT) received in the block: yields the list it is
    appended to, and raises `KeyboardInterrupt` when the block ends.

    Args:
        second_stops: bool. A second Ctrl-C raises at once (the hold of a whole
            `fit`, whose `_StopAtStepEnd` acts on the first); else every Ctrl-C
            waits for the block's end (a checkpoint being written is finished).
    """
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum, frame):
        if received and second_stops:
            raise KeyboardInterrupt
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _interrupts_held_in_fit():
    """`_interrupts_held` for a whole `fit`: `_StopAtStepEnd` raises the first
    Ctrl-C at the end of a step; a second one interrupts at once."""
    return _interrupts_held(second_stops=True)


class _StopAtStepEnd(keras.callbacks.Callback):
    """Raises the `KeyboardInterrupt` of a Ctrl-C held by `_interrupts_held_in_fit`
    between two training steps, outside the backend's tracing and execution
    (a `KeyboardInterrupt` raised inside TensorFlow's first-step tracing surfaced
    as an unrelated `TypeError`). It acts when the next step begins: a callback
    at a step's end would make Keras wait for every step's losses (no batch-end
    hook keeps the device's queue full)."""

    def __init__(self, received):
        super().__init__()
        self.received = received

    def on_train_batch_begin(self, batch, logs=None):
        if self.received:
            raise KeyboardInterrupt

    on_epoch_end = on_train_batch_begin


class _Backup(EpochBackupAndRestore):
    """`EpochBackupAndRestore` whose checkpoint writes a Ctrl-C cannot cut in
    half (a half-written `latest.weights.h5` could not be resumed)."""

    def on_train_batch_end(self, batch, logs=None):
        with _interrupts_held():
            super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        with _interrupts_held():
            super().on_epoch_end(epoch, logs)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read it ({error}); remove the unfinished run") from None


def _resolve_settings(given, out, flags, image_shape):
    """The run's settings: `given` over the preset's defaults, or the
    interrupted run's.

    Args:
        given: dict of the settings given on the command line.
        out: the `AtomicOutputDir`.
        flags: dict, setting name -> its command-line flag (for messages).
        image_shape: `(H, W, C)` of the images (chooses the preset for auto).
    """
    if not out.resuming:
        preset = given.get("preset") or preset_for_size(*image_shape)
        changes = {name: value for name, value in given.items() if name != "preset"}
        return CongealSettings.for_preset(preset, **changes)
    try:
        saved = CongealSettings.from_dict(_read_json(out.file(SETTINGS_FILE)))
    except ValueError as error:
        raise InputError(f"{out.file(SETTINGS_FILE)}: {error}") from None
    changed = [
        f"{flags[name]} {value} (was {getattr(saved, name)})"
        for name, value in given.items() if value != getattr(saved, name)
    ]
    if changed:
        raise InputError(
            f"--resume: {out.partial} was started with other settings: {', '.join(changed)}; "
            "give the same ones (or none), or remove it to start afresh"
        )
    return saved


def _resolved(settings, image_shape):
    """`settings` with what "auto" stands for written out: the preset chosen
    from the image size and its code size, as the run uses them."""
    preset = settings.preset or preset_for_size(*image_shape)
    code_size = settings.code_size or get_preset(preset)["autoencoder"]["code_size"]
    return dataclasses.replace(settings, preset=preset, code_size=code_size)


def _describe_input(info):
    source = info.get("path") or info.get("kind")
    key = f"[{info['key']}]" if info.get("key") else ""
    return f"{info.get('images')} images {info.get('shape')} {info.get('dtype')} from {source}{key}"


def _check_same_input(out, info):
    saved = _read_json(out.file(RUN_FILE)).get("input") or {}
    if saved != info:
        raise InputError(
            f"--resume: the input differs from that of {out.partial} (it had "
            f"{_describe_input(saved)}, now {_describe_input(info)}); pass the same input, "
            "or remove it"
        )


def _resolve_reference(settings, inputs):
    """The reference image (H, W, C) float32 in [0, 1], its index (or None) and
    the `ReferenceWarning` of an atypical automatic choice (or None)."""
    spec = settings.reference
    if isinstance(spec, str) and spec not in STRATEGIES:  # an image file
        try:
            return choose_reference(images_nhwc(inputs.images), spec)[0], None, None
        except InputError as error:
            raise InputError(f"--reference {error}") from None
    if isinstance(spec, int) and not -inputs.count <= spec < inputs.count:
        raise InputError(f"--reference {spec}: out of range for {inputs.count} images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReferenceWarning)
        reference, index = choose_reference(images_nhwc(inputs.images), spec,
                                            data_range=inputs.data_range, seed=settings.seed)
    notes = [str(w.message) for w in caught if issubclass(w.category, ReferenceWarning)]
    return reference, index, (notes[0] if notes else None)


def _build_model(settings, reference, inputs, devices=None):
    keras.utils.set_random_seed(settings.seed)
    try:
        local_devices(devices)
    except ValueError as error:
        raise InputError(str(error).replace("Invalid devices=", "--devices ")) from None
    try:
        # Built: the reference has the images' shape.
        model = build_congealer(settings, reference, devices=devices)
    except ValueError as error:
        reason = str(error).strip().splitlines()[0]
        raise InputError(f"{inputs.source.name}: {reason}") from None
    return model


def _backup_epoch(backup_dir):
    """Epochs finished according to the `BackupAndRestore` backup (0: none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(os.path.join(backup_dir, "latest.weights.h5")):
        return 0
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _history(path, epochs):
    """The logged epochs up to `epochs` (the file is rewritten to hold just those)."""
    entries = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut by the kill
                    continue
                if entry.get("epoch", 0) <= epochs:
                    entries.append(entry)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in entries)
    return entries


def _oracle(demo):
    """The demo's known perturbations undone (`oracle_align`): APSNR, ink."""
    from keras_congeal.data import oracle_align
    from keras_congeal.metrics import ImageStats, ink_kept

    oracle = oracle_align(demo["images"], demo["matrices"])
    return {
        "apsnr": ImageStats(255.0).update(oracle).apsnr(),
        "ink_kept": ink_kept(demo["images"], oracle),
        "apsnr_originals": ImageStats(255.0).update(demo["originals"]).apsnr(),
    }


def _train(out, inputs, settings, model, quiet, devices=None):
    """Trains `model` in `out.partial` (resuming its backup, if any).

    Returns:
        `(model, history, resumed_after, seconds)`: the trained model, the
        per-epoch log of every session, the epoch the backup held (0: none)
        and this session's training time.
    """
    backup_dir = out.file(BACKUP_DIR)
    epochs = settings.epochs_for(inputs.count)
    resumed_after = _backup_epoch(backup_dir)
    _history(out.file(HISTORY_FILE), resumed_after)  # drops epochs logged after the backup
    if out.resuming and not quiet:
        print(f"resuming {out.partial} after epoch {resumed_after} of {epochs}")
    start = time.perf_counter()
    with _interrupts_held_in_fit() as interrupted:
        callbacks = [
            _EpochLog(out.file(HISTORY_FILE)),
            # Kept until the outputs are written: a run killed while aligning
            # resumes with every epoch done.
            _Backup(backup_dir, delete_checkpoint=False),
            _StopAtStepEnd(interrupted),
        ]
        model, _ = fit_congealer(inputs.images, settings, callbacks=callbacks,
                                 verbose=0 if quiet else "auto", model=model, devices=devices)
    seconds = time.perf_counter() - start
    return model, _history(out.file(HISTORY_FILE), epochs), resumed_after, seconds


def train_and_align(args, given, flags, out, inputs):
    """Trains on the input and aligns it into the output directory.

    Args:
        args: the parsed `argparse.Namespace`.
        given: dict of the `CongealSettings` fields given on the command line.
        flags: dict, settings field -> flag (for messages).
        out: the checked `AtomicOutputDir` (`output_dir`).
        inputs: the opened `InputSet` (closed by the caller).

    Returns:
        The exit status (0, or 130 when interrupted).

    Raises:
        InputError: a bad input or output; nothing was written.
    """
    start_time = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    if args.resume and not out.resuming:
        say(f"--resume: no unfinished run in {out.partial}; starting a new one")
    # === Checks and set-up: nothing is written ===
    if "preset" in given and given["preset"] is None:  # --preset auto
        given["preset"] = preset_for_size(*inputs.image_shape)
    settings = _resolved(_resolve_settings(given, out, flags, inputs.image_shape),
                         inputs.image_shape)
    info = inputs.info(args.limit)
    if out.resuming:
        _check_same_input(out, info)
    reference, reference_index, reference_warning = _resolve_reference(settings, inputs)
    model = _build_model(settings, reference, inputs, args.devices)
    preset = settings.preset
    shown = (settings.reference if reference_index is None
             else f"image {reference_index} ({settings.reference})")
    epochs = settings.epochs_for(inputs.count)
    if settings.distortion_target == "batch-mean":
        shown = f"{shown}; the distortion compares with the aligned batch's mean"
    say(f"congealing {inputs.describe()}; {preset} preset, {settings.transform}, "
        f"{settings.objective}, {epochs} epoch(s); reference: {shown}")

    if not is_main_process():
        # Multi-host: this process trains its slice of every batch; process
        # 0 trains the same model and writes every output.
        # The same callbacks as process 0, writing into a scratch folder:
        # without process 0's per-epoch weight backup here, the processes'
        # collectives went out of step (gloo: "collective mismatch").
        with tempfile.TemporaryDirectory() as scratch:
            fit_congealer(inputs.images, settings, verbose=0, model=model,
                          devices=args.devices,
                          callbacks=[_EpochLog(os.path.join(scratch, HISTORY_FILE)),
                                     _Backup(scratch, delete_checkpoint=False)])
        say(f"process {process_index_and_count()[0]}: trained; process 0 writes the outputs")
        return 0

    # === Training and outputs, in DIR.partial/ ===
    partial = out.begin()
    try:
        if not out.resuming:
            with atomic_file(out.file(SETTINGS_FILE)) as tmp, open(tmp, "w") as f:
                f.write(settings.to_json() + "\n")
            write_json(out.file(RUN_FILE), {"input": info})
        model, history, resumed_after, train_seconds = _train(
            out, inputs, settings, model, args.quiet, args.devices
        )
        save_without_optimizer(model, out.file("model.keras"))
        say("aligning")
        meter, align_seconds = align_into(model, inputs, partial, args.align_batch_size,
                                          verbose=not args.quiet)
        write_figures(partial, inputs, meter, reference, f"reference: {shown}")
        if inputs.filenames is not None:
            write_json(out.file("filenames.json"), inputs.filenames)
        summary = meter.summary()
        summary.pop("images")
        report = {
            **report_header("congeal"),
            "input": {**info, "description": (inputs.demo or {}).get("description")},
            "images": inputs.count,
            "image_shape": list(inputs.image_shape),
            "dtype": inputs.dtype.name,
            **summary,
            "oracle": _oracle(inputs.demo) if inputs.demo is not None else None,
            "seconds": {
                "training": train_seconds,
                "training_all_sessions": sum(e.get("seconds", 0.0) for e in history),
                "aligning": align_seconds,
                "total": time.perf_counter() - start_time,
            },
            "epochs": epochs,
            "resumed_from_epoch": resumed_after if out.resuming else None,
            "preset": preset,
            "reference": settings.reference,
            "reference_index": reference_index,
            "reference_warning": reference_warning,
            "settings": settings.to_dict(),
            "history": history,
        }
        write_report(out, report, scratch=SCRATCH)
        out.commit(drop=SCRATCH)
    except KeyboardInterrupt:
        print(f"keras-congeal: interrupted; the unfinished run is in {out.partial}: "
              "run the same command with --resume to continue it", file=sys.stderr)
        return 130
    except BaseException:
        print(f"keras-congeal: the unfinished run is kept in {out.partial} (the same "
              "command with --resume continues it)", file=sys.stderr)
        raise
    for line in summary_lines(report, out.path):
        print(line)
    return 0
