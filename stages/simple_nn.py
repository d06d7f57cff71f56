"""Stage ``simple_nn`` (tutorial 01): a two-layer network on the moons, trained eagerly.

``Dense(10, relu) -> Dense(2)``, SGD, full-batch epochs, as the tutorial. Writes
``metrics/simple_nn.json``, the loss curve (``plots/simple_nn/history.tsv``), a
decision-boundary picture and the trained weights.

With ``distribute.strategy`` other than ``none`` (stages/common/distribute.py) the
same training runs on the local devices or on the workers of ``TF_CONFIG``
(``python -m stages.apps.launch_workers -n 2 -- python -m stages.simple_nn``);
only the chief writes outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from stages.common.cli import run_stage
from stages.common.distribute import is_chief, load_distribute, make_strategy, strategy_is_chief
from stages.common.params import TrainingSection, load_params

log = logging.getLogger(__name__)

DATA = Path("data/toy/moons.csv")
MODEL_DIR = Path("models/simple_nn")
METRICS = Path("metrics/simple_nn.json")
PLOTS = Path("plots/simple_nn")
CHECKPOINTS = Path("checkpoints")


class SimpleNNParams(TrainingSection):
    hidden_units: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description=">= the data size means full-batch, as the tutorial")


def plot_decision_boundary(model, x, y, path: Path) -> None:
    """Class regions of the trained model over the moons, with the training points."""
    import numpy as np

    from stages.common.plotting import plt, save_png

    pad = 0.5
    xx, yy = np.meshgrid(
        np.linspace(x[:, 0].min() - pad, x[:, 0].max() + pad, 200),
        np.linspace(x[:, 1].min() - pad, x[:, 1].max() + pad, 200),
    )
    grid = np.c_[xx.ravel(), yy.ravel()].astype(np.float32)
    classes = np.argmax(model(grid, training=False).numpy(), axis=1).reshape(xx.shape)
    figure, axes = plt.subplots(figsize=(5, 4))
    axes.contourf(xx, yy, classes, levels=[-0.5, 0.5, 1.5], colors=["#9ecae1", "#fdae6b"], alpha=0.6)
    axes.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", edgecolors="k", s=20)
    axes.set(title="simple_nn: decision boundary on the moons", xlabel="x0", ylabel="x1")
    save_png(figure, path)


def main() -> None:
    seed, p = load_params("simple_nn", SimpleNNParams)
    strategy = make_strategy(load_distribute())  # None for `none`; before any other TensorFlow op

    import keras

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints
    from stages.common.outputs import atomic_outputs, write_history, write_json
    from stages.common.replicas import distribute_batches, scope
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer, array_batches
    from stages.datasets.tabular import read_tabular
    from stages.models.dense_net import build_dense_net

    chief = strategy_is_chief(strategy)
    seed_everything(seed)
    data = read_tabular(DATA)
    x, y = data.x, data.y  # tutorial 01 trains on all 100 points

    with scope(strategy):  # with a strategy, its variables are made in its scope
        model = build_dense_net(x.shape[1], [p.hidden_units], 2, name="simple_nn")
        optimizer = keras.optimizers.SGD(learning_rate=p.learning_rate)
    trainer = Trainer(
        model,
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics={"accuracy": keras.metrics.SparseCategoricalAccuracy},
        run_eagerly=p.run_eagerly,
        strategy=strategy,
    )
    ckpt = checkpoint_dir(CHECKPOINTS, "simple_nn", p, seed, prune=chief)
    batches = array_batches(x, y, p.batch_size, seed=seed)
    history = trainer.fit(
        lambda epoch: distribute_batches(strategy, batches(epoch)),  # split among the replicas
        p.epochs,
        checkpoint_dir=ckpt,
        checkpoint_every_s=p.checkpoint_every_s,
        desc="simple_nn",
    )
    final = trainer.evaluate(distribute_batches(strategy, [(x, y)]), prefix="train_")
    log.info(
        "epoch 1 loss %.4f -> epoch %d loss %.4f, accuracy %.3f",
        history[0]["loss"],
        len(history),
        final["train_loss"],
        final["train_accuracy"],
    )

    if not chief:
        return  # the chief writes the outputs (and clears the checkpoints)
    with atomic_outputs() as out:
        write_json(
            out.file(METRICS),
            {
                "train_loss": final["train_loss"],
                "train_accuracy": final["train_accuracy"],
                "first_epoch_loss": history[0]["loss"],
                "epochs": len(history),
            },
        )
        write_history(out.file(PLOTS / "history.tsv"), history)
        plot_decision_boundary(model, x, y, out.file(PLOTS / "decision_boundary.png"))
        model_dir = out.directory(MODEL_DIR)
        model.save_weights(model_dir / "model.weights.h5")
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, "simple_nn", lock=is_chief())  # the other workers of a cluster write nothing
