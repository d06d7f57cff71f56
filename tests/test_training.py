"""The shared eager training loop: it learns, stops early on the best weights, and resumes."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from stages.common.checkpoints import checkpoint_dir, clear_checkpoints
from stages.common.early_stopping import EarlyStopping
from stages.common.replicas import distribute_input
from stages.common.seeding import seed_everything
from stages.common.training import Trainer, array_batches


def moons(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.1, random_state=0)
    return x.astype(np.float32), y.astype(np.int32)


def new_trainer(learning_rate: float = 0.5, run_eagerly: bool = False, seed: int = 0) -> Trainer:
    seed_everything(seed)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    return Trainer(
        model,
        keras.optimizers.SGD(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        {"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=run_eagerly,
    )


def weights(trainer: Trainer) -> list[np.ndarray]:
    return [np.array(w) for w in trainer.model.weights]


@pytest.mark.slow
def test_loss_decreases_and_accuracy_rises() -> None:
    x, y = moons()
    history = new_trainer().fit(array_batches(x, y, 16, seed=1), epochs=60)
    assert [h["epoch"] for h in history] == list(range(1, 61))
    assert history.best_epoch == 60  # without early stopping the last weights are kept
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["accuracy"] > 0.85


@pytest.mark.slow
def test_eager_and_compiled_steps_agree() -> None:
    x, y = moons()
    compiled = new_trainer(run_eagerly=False)
    compiled.fit(array_batches(x, y, 16, seed=1), epochs=3)
    eager = new_trainer(run_eagerly=True)
    assert not isinstance(eager.train_step, tf.types.experimental.PolymorphicFunction)
    eager.fit(array_batches(x, y, 16, seed=1), epochs=3)
    for a, b in zip(weights(compiled), weights(eager), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_predict_labelled_pairs_every_target_with_its_output_in_order() -> None:
    x, y = moons(50)
    trainer = new_trainer()
    targets, outputs = trainer.predict_labelled(array_batches(x, y, 16, seed=3)(1))  # shuffled, last batch 2
    assert targets.shape == (50,) and outputs.shape == (50, 2)
    np.testing.assert_array_equal(np.sort(targets), np.sort(y))
    by_row = {tuple(row): i for i, row in enumerate(x)}
    shuffled_x = np.concatenate([xb for xb, _ in array_batches(x, y, 16, seed=3)(1)])
    order = [by_row[tuple(row)] for row in shuffled_x]
    np.testing.assert_array_equal(targets, y[order])
    np.testing.assert_allclose(outputs, trainer.predict([x[order]]), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_early_stopping_restores_the_best_weights() -> None:
    x, y = moons()
    # A learning rate this large makes the loss bounce: the best epoch is not the last.
    trainer = new_trainer(learning_rate=8.0)
    snapshots: list[list[np.ndarray]] = []
    history = trainer.fit(
        array_batches(x, y, 64, seed=1),
        epochs=40,
        validation=lambda: [(x, y)],
        early_stopping=EarlyStopping(monitor="val_loss", mode="min", patience=3),
        on_epoch_end=lambda epoch, logs: snapshots.append(weights(trainer)),
    )
    losses = [h["val_loss"] for h in history]
    best = int(np.argmin(losses))
    assert best < len(history) - 1, "the run should have gone on past its best epoch"
    assert len(history) - 1 - best == 3  # stopped after `patience` epochs without improvement
    assert history.best_epoch == best + 1  # what the stages report as best_epoch
    for restored, saved in zip(weights(trainer), snapshots[best], strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert trainer.evaluate([(x, y)])["val_loss"] == pytest.approx(losses[best], rel=1e-6)


@pytest.mark.slow
def test_without_a_strategy_a_function_of_the_input_context_gets_none_and_trains_as_its_batches() -> None:
    # The stages hand distribute_input one kind of input, with a strategy or without (train_emotion_cnn).
    x, y = moons()
    batches = array_batches(x, y, 16, seed=3)
    contexts: list[object] = []

    def recording(make):
        def of(context: object):
            contexts.append(context)
            return make()

        return of

    plain, functions = new_trainer(), new_trainer()
    expected = plain.fit(batches, epochs=3, validation=lambda: [(x, y)])
    got = functions.fit(
        lambda epoch: distribute_input(None, recording(lambda: batches(epoch))),
        epochs=3,
        validation=lambda: distribute_input(None, recording(lambda: [(x, y)])),
    )
    assert contexts == [None] * 6  # each epoch: train, then validation
    assert [dict(h) for h in got] == [dict(h) for h in expected]
    assert functions.evaluate(distribute_input(None, lambda context: [(x, y)])) == plain.evaluate([(x, y)])


@pytest.mark.slow
def test_interrupted_run_resumes_from_the_saved_epoch(tmp_path: Path) -> None:
    x, y = moons()
    batches = array_batches(x, y, 16, seed=3)
    uninterrupted = new_trainer()
    reference = uninterrupted.fit(batches, epochs=6)

    def interrupt(epoch: int, logs: dict) -> None:
        if epoch == 3:  # the 4th epoch finished and was checkpointed: stop as Ctrl-C would
            raise KeyboardInterrupt

    first = new_trainer()
    with pytest.raises(KeyboardInterrupt):
        first.fit(batches, epochs=6, checkpoint_dir=tmp_path, checkpoint_every_s=0.0, on_epoch_end=interrupt)
    steps_per_epoch = int(np.ceil(len(x) / 16))
    assert int(first.optimizer.iterations.numpy()) == 4 * steps_per_epoch

    resumed = new_trainer(seed=99)  # fresh objects, different init: everything must come from the checkpoint
    seen: list[int] = []
    history = resumed.fit(
        batches,
        epochs=6,
        checkpoint_dir=tmp_path,
        checkpoint_every_s=0.0,
        on_epoch_end=lambda epoch, logs: seen.append(epoch),
    )
    assert seen == [4, 5]  # only the epochs that were missing
    assert history.best_epoch == 6
    assert int(resumed.optimizer.iterations.numpy()) == 6 * steps_per_epoch
    assert [h["epoch"] for h in history] == list(range(1, 7))
    for a, b in zip(history, reference, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for wa, wb in zip(weights(resumed), weights(uninterrupted), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def test_finished_run_is_not_trained_again(tmp_path: Path) -> None:
    x, y = moons()
    batches = array_batches(x, y, 16, seed=3)
    done = new_trainer()
    done.fit(batches, epochs=3, checkpoint_dir=tmp_path, checkpoint_every_s=1e9)
    again = new_trainer(seed=5)
    calls: list[int] = []
    history = again.fit(batches, epochs=3, checkpoint_dir=tmp_path, on_epoch_end=lambda e, logs: calls.append(e))
    assert calls == [] and len(history) == 3
    for a, b in zip(weights(again), weights(done), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_checkpoint_dir_is_keyed_to_params_and_cleans_stale_runs(tmp_path: Path) -> None:
    first = checkpoint_dir(tmp_path, "stage", {"epochs": 5}, seed=1)
    assert not first.exists()  # created by the first save: a run failing before it leaves nothing
    first.mkdir(parents=True)
    (first / "ckpt").write_text("x")
    assert checkpoint_dir(tmp_path, "stage", {"epochs": 5}, seed=1) == first
    assert (first / "ckpt").exists()
    second = checkpoint_dir(tmp_path, "stage", {"epochs": 6}, seed=1)
    assert second != first and not first.exists()
    third = checkpoint_dir(tmp_path, "stage", {"epochs": 6}, seed=2)
    assert third != second and not second.exists()
    clear_checkpoints(third)
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["README.txt"]
