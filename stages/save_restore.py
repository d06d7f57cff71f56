"""Stage ``save_restore`` (tutorial 03): save a trained model, restore it, check it is the same.

Trains tutorial 01's network on the first 80 moons, then saves it twice:
a ``tf.train.Checkpoint`` (weights + optimizer state, for resuming training) and
an exported SavedModel (for serving, loadable without this project's code).
Both are restored into fresh objects; their predictions on the 20 test points
must equal the original's exactly (``max_abs_diff`` 0.0). The restored model then
continues training from the loss it was saved at, as the tutorial showed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from stages.common.cli import StageError, run_stage
from stages.common.params import TrainingSection, load_params

log = logging.getLogger(__name__)

DATA = Path("data/toy/moons.csv")
MODEL_DIR = Path("models/save_restore")
METRICS = Path("metrics/save_restore.json")
PLOTS = Path("plots/save_restore")
CHECKPOINTS = Path("checkpoints")


class SaveRestoreParams(TrainingSection):
    hidden_units: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    epochs: int = Field(ge=1, description="epochs before saving")
    continue_epochs: int = Field(ge=1, description="epochs trained after restoring")


def new_trainer(input_dim: int, p: SaveRestoreParams):
    import keras

    from stages.common.training import Trainer
    from stages.models.dense_net import build_dense_net

    return Trainer(
        build_dense_net(input_dim, [p.hidden_units], 2, name="save_restore"),
        keras.optimizers.SGD(learning_rate=p.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=p.run_eagerly,
    )


def export_model(model, path: Path) -> None:
    """A SavedModel with one ``serve`` signature: features float32 (b, d) -> logits (b, 2).

    A ``tf.Module`` rather than Keras' ``model.export``, whose variable order
    follows object addresses: the same weights must give the same bytes.
    """
    import tensorflow as tf

    from stages.common.export import save

    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, model.input_shape[-1]], tf.float32, name="features")])
    def serve(features):
        return module.model(features, training=False)

    module.serve = serve
    save(module, path, signatures={"serving_default": serve})


def main() -> None:
    seed, p = load_params("save_restore", SaveRestoreParams)

    import numpy as np
    import tensorflow as tf

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints
    from stages.common.outputs import atomic_outputs, write_json, write_tsv
    from stages.common.seeding import seed_everything
    from stages.common.training import array_batches
    from stages.datasets.tabular import read_tabular

    seed_everything(seed)
    data = read_tabular(DATA)
    batches = array_batches(data.x_train, data.y_train, len(data.y_train), seed=seed)  # full batch

    original = new_trainer(data.x_train.shape[1], p)
    ckpt = checkpoint_dir(CHECKPOINTS, "save_restore", p, seed)
    history = original.fit(
        batches, p.epochs, checkpoint_dir=ckpt, checkpoint_every_s=p.checkpoint_every_s, desc="save_restore"
    )
    expected = original.predict([data.x_test])
    saved_train = original.evaluate([(data.x_train, data.y_train)], prefix="train_")

    with atomic_outputs() as out:
        model_dir = out.directory(MODEL_DIR)
        # Save: a checkpoint of the whole training state, and a SavedModel for serving.
        checkpoint_prefix = tf.train.Checkpoint(model=original.model, optimizer=original.optimizer).write(
            str(model_dir / "checkpoint" / "ckpt")
        )
        export_model(original.model, model_dir / "saved_model")

        # Restore each into fresh objects.
        restored = new_trainer(data.x_train.shape[1], p)
        restored.optimizer.build(restored.model.trainable_variables)
        tf.train.Checkpoint(model=restored.model, optimizer=restored.optimizer).read(
            checkpoint_prefix
        ).assert_consumed()
        from_checkpoint = restored.predict([data.x_test])
        served = tf.saved_model.load(str(model_dir / "saved_model"))
        from_saved_model = served.serve(tf.constant(data.x_test)).numpy()

        checkpoint_diff = float(np.max(np.abs(from_checkpoint - expected)))
        saved_model_diff = float(np.max(np.abs(from_saved_model - expected)))
        if int(restored.optimizer.iterations.numpy()) != int(original.optimizer.iterations.numpy()):
            raise StageError("restored optimizer lost its step count")

        # Continue training the restored model: it picks up at the saved loss.
        continued = restored.fit(lambda epoch: batches(p.epochs + epoch), p.continue_epochs, desc="continue")
        test = restored.evaluate([(data.x_test, data.y_test)], prefix="test_")
        original_test = original.evaluate([(data.x_test, data.y_test)], prefix="test_")

        metrics = {
            "max_abs_diff": max(checkpoint_diff, saved_model_diff),
            "checkpoint_max_abs_diff": checkpoint_diff,
            "saved_model_max_abs_diff": saved_model_diff,
            "train_loss_at_save": saved_train["train_loss"],
            "restored_first_epoch_loss": continued[0]["loss"],
            "continued_train_loss": continued[-1]["loss"],
            "saved_test_accuracy": original_test["test_accuracy"],
            "test_accuracy": test["test_accuracy"],
            "test_loss": test["test_loss"],
            "optimizer_steps": int(restored.optimizer.iterations.numpy()),
        }
        log.info("%s", metrics)
        write_json(out.file(METRICS), metrics)
        rows = [(h["epoch"], h["loss"], h["accuracy"], "before save") for h in history]
        rows += [(p.epochs + h["epoch"], h["loss"], h["accuracy"], "after restore") for h in continued]
        write_tsv(out.file(PLOTS / "history.tsv"), ["epoch", "loss", "accuracy", "phase"], rows)
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, "save_restore")
