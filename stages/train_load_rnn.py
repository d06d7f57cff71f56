"""Stage ``train_load_rnn`` (tutorial 09): next-day hourly load from the last ``look_back`` days.

``LSTM(16) -> Dense(16, relu) -> Dense(24)`` (stages/models/load_rnn.py) on the
scaled 24-hour profiles of the series TFRecords (stages/tfrecords_series.py:
time-ordered splits, windows that never cross a split, scaler fitted on train
only). MSE on scaled values, Adam, early stopping on the validation loss with
the best weights restored, resumable checkpoints.

``calendar_features: true`` gives the network what a forecaster knows about
the days (the TFRecords' ``calendar``: weekday one-hot, national holiday, day
before / after a holiday), the input days' at the LSTM's steps and the target
day's before ``Dense(16, relu)`` (stages/models/load_rnn.py). ``false`` is the
tutorial's network exactly.

``ensemble: N`` trains N such networks, the k-th with seed ``seed + k`` (so
``ensemble: 1`` is the single network of ``seed``), and forecasts their mean: the
networks' errors are partly independent, so the mean errs less than a typical
member. Every figure below is then the mean forecast's; ``member_valid_mape``,
``member_test_mape`` and ``member_best_epoch`` give each network alone, ``epochs``,
``best_epoch``, ``history.tsv`` and ``model.weights.h5`` are the first network's
(the others' weights: ``member-<k>.weights.h5``). ``lr_schedule: cosine`` decays
Adam's rate to 0 over ``max_epochs``.

A forecast is only worth having if it beats the seasonal-naive ones, so the
test MAE in MW is reported next to two baselines computed on exactly the same
test days:

- ``naive_yesterday``: tomorrow = the last input day;
- ``naive_last_week``: tomorrow = the same weekday one week earlier.

and, as a reference rather than a baseline to beat, the grid operator's own
day-ahead forecast from the export (``operator_forecast_*``: weather-aware,
made with information this model never sees), on the test days where it has
all 24 hours (``operator_forecast_days``; the model's MAE on those same days is
``test_mae_mw_operator_days``). Without a forecast column they are null.

Errors in MW: ``test_mae_mw``, ``test_rmse_mw``, ``test_mape`` (%).
``test_mse_scaled`` is the MSE in this pipeline's per-hour scaling.
``test_mse_global_scaler`` is the tutorial's figure (0.049): the MSE of the
MW forecasts divided by the variance of ONE global StandardScaler fitted on
every hour of the training split (``scaler.json``'s ``global``), i.e.
``mean((actual - predicted)^2) / global_std^2``. The tutorial fitted it on its
first 80 % and scored its last 20 %; here train is the first 70 % and test the
last 15 %, so the figure is comparable, not identical.

With ``look_back`` < 7 the test windows alone do not reach a week back for the
first test days, so the daily profiles are rebuilt from the MW metadata of the
*validation and test* windows (``inputs_mw`` and ``target_mw``, keyed by date):
the validation split ends the day before the test split starts, so every test
day has its last-week profile. Those are past actual loads, known at forecast
time - no leakage - and the stage keeps reading only the files the TFRecords
stage declared (not ``load.csv``). A test day whose profile a week back is
still missing (never with the default fractions) is dropped from *all* the
test metrics, model and baselines alike; ``test_days`` says how many remain.

Outputs: ``metrics/load_forecast.json``, ``plots/train_load_rnn/history.tsv``
and ``forecast_days.png`` (predicted vs actual MW for six evenly spaced test
days), ``models/load_rnn/model.weights.h5``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from stages.common.cli import StageError, run_stage
from stages.common.params import TrainingSection, load_params

log = logging.getLogger(__name__)

DATA_DIR = Path("data/tfrecords/series")
MODEL_DIR = Path("models/load_rnn")
METRICS = Path("metrics/load_forecast.json")
PLOTS = Path("plots/train_load_rnn")
CHECKPOINTS = Path("checkpoints")
STAGE = "train_load_rnn"
PLOTTED_DAYS = 6


class TrainLoadRnnParams(TrainingSection):
    lstm_units: int = Field(ge=1)
    dense_units: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1, description="epochs without a lower validation loss before stopping")
    calendar_features: bool = Field(description="feed the days' calendar flags (weekday, holidays) to the network")
    lr_schedule: Literal["constant", "cosine"] = Field(
        description="Adam's learning rate: constant, or a cosine decay to 0 over max_epochs"
    )
    ensemble: int = Field(
        ge=1, le=64, description="networks trained with seeds seed, seed + 1, ...; their forecasts averaged"
    )


# --- pure functions: scaling, baselines, errors (NumPy only) -----------------------------------


def inverse_transform(scaled: np.ndarray, scaler: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Scaled loads (..., 24) back to MW: ``value * scale[hour] + mean[hour]``."""
    return np.asarray(scaled, np.float64) * np.asarray(scaler["scale"]) + np.asarray(scaler["mean"])


def day_profiles(
    target_days: Sequence[str] | np.ndarray, inputs_mw: np.ndarray, target_mw: np.ndarray
) -> dict[dt.date, np.ndarray]:
    """Every day a set of windows shows, date -> its 24 MW values.

    ``inputs_mw`` (n, look_back, 24) holds the ``look_back`` days before each
    ``target_days[i]``, ``target_mw`` (n, 24) that day itself.
    """
    inputs_mw, target_mw = np.asarray(inputs_mw, np.float64), np.asarray(target_mw, np.float64)
    look_back = inputs_mw.shape[1]
    profiles: dict[dt.date, np.ndarray] = {}
    for i, day in enumerate(target_days):
        target = dt.date.fromisoformat(day)
        profiles[target] = target_mw[i]
        for k in range(look_back):
            profiles[target - dt.timedelta(days=look_back - k)] = inputs_mw[i, k]
    return profiles


def naive_yesterday(inputs_mw: np.ndarray) -> np.ndarray:
    """Tomorrow = the last input day: (n, look_back, 24) -> (n, 24)."""
    return np.asarray(inputs_mw, np.float64)[:, -1, :]


def naive_last_week(target_days: Sequence[str] | np.ndarray, profiles: Mapping[dt.date, np.ndarray]) -> np.ndarray:
    """Tomorrow = the same weekday a week earlier: (n, 24), NaN rows where that day is unknown."""
    rows = []
    for day in target_days:
        week_ago = dt.date.fromisoformat(day) - dt.timedelta(days=7)
        rows.append(profiles.get(week_ago, np.full(24, np.nan)))
    return np.asarray(rows, np.float64).reshape(len(rows), 24)


def mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(actual, np.float64) - np.asarray(predicted, np.float64))))


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    actual = np.asarray(actual, np.float64)
    return float(100.0 * np.mean(np.abs(actual - np.asarray(predicted, np.float64)) / np.abs(actual)))


def skill(model_mae: float, baseline_maes: Sequence[float]) -> float:
    """1 - model MAE / the best (lowest) baseline MAE: > 0 means the model beats every baseline."""
    return float(1.0 - model_mae / min(baseline_maes))


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indexes spread evenly over ``range(n)``, first and last included."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n)).round()})


# --- training, evaluation ---------------------------------------------------------------------


def train_model(p: TrainLoadRnnParams, seed: int, data_dir: Path, checkpoints: Path | None, on_epoch_end=None):
    """Seed, build and train; return ``(trainer, history)`` with the best weights restored."""
    import keras

    from stages.common.early_stopping import EarlyStopping
    from stages.common.input_pipelines import read_spec, series_batches
    from stages.common.seeding import seed_everything
    from stages.common.training import Trainer
    from stages.models.load_rnn import build_load_rnn

    seed_everything(seed)
    spec = read_spec(data_dir)
    n_calendar = n_calendar_features(spec, p)
    trainer = Trainer(
        build_load_rnn(
            int(spec["look_back"]), lstm_units=p.lstm_units, dense_units=p.dense_units, n_calendar=n_calendar
        ),
        keras.optimizers.Adam(learning_rate=learning_rate(p, spec)),
        keras.losses.MeanSquaredError(),
        run_eagerly=p.run_eagerly,
    )
    calendar = bool(n_calendar)
    history = trainer.fit(
        train=lambda epoch: series_batches(
            data_dir, "train", p.batch_size, shuffle_seed=seed, epoch=epoch, calendar=calendar
        ),
        epochs=p.max_epochs,
        validation=lambda: series_batches(data_dir, "valid", p.batch_size, calendar=calendar),
        early_stopping=EarlyStopping(monitor="val_loss", mode="min", patience=p.patience),
        checkpoint_dir=checkpoints,
        checkpoint_every_s=p.checkpoint_every_s,
        on_epoch_end=on_epoch_end,
        desc=STAGE,
    )
    return trainer, history


def learning_rate(p: TrainLoadRnnParams, spec: Mapping):
    """Adam's learning rate: the constant ``learning_rate``, or its cosine decay to 0 over ``max_epochs``.

    A schedule of the optimizer's step counter, which the checkpoint holds, so a resumed run
    continues on the same curve.
    """
    if p.lr_schedule == "constant":
        return p.learning_rate
    import keras

    steps_per_epoch = -(-int(spec["splits"]["train"]["examples"]) // p.batch_size)
    return keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=p.max_epochs * steps_per_epoch)


def n_calendar_features(spec: Mapping, p: TrainLoadRnnParams) -> int:
    """How many calendar flags per day the model takes: 0 without ``calendar_features``."""
    if not p.calendar_features:
        return 0
    n = len(spec.get("calendar", {}).get("features", []))
    if not n:
        raise StageError(
            f"{DATA_DIR / 'spec.json'}: the TFRecords have no calendar features "
            f"(re-run tfrecords_series, or set train_load_rnn.calendar_features: false)"
        )
    return n


def model_inputs(split: Mapping[str, np.ndarray], calendar: bool, batch_size: int) -> list:
    """A collected split's inputs in batches, in the structure the model takes."""
    n = len(split["inputs"])
    if calendar:
        return [
            {"days": split["inputs"][i : i + batch_size], "calendar": split["calendar"][i : i + batch_size]}
            for i in range(0, n, batch_size)
        ]
    return [split["inputs"][i : i + batch_size] for i in range(0, n, batch_size)]


def operator_forecast(test: Mapping[str, np.ndarray], keep: np.ndarray, predicted_mw: np.ndarray) -> dict:
    """The grid operator's day-ahead forecast on the kept test days where it has all 24 hours.

    Null errors (and a log line) when no such day exists: an export without the
    forecast column, or with it blank.
    """
    forecast = np.asarray(test.get("forecast_mw", np.full((len(keep), 24), np.nan)), np.float64)
    complete = keep & np.isfinite(forecast).all(axis=1)
    if not complete.any():
        log.info("no test day has a complete day-ahead forecast in the export: operator_forecast_* are null")
        return {
            "operator_forecast_days": 0,
            "operator_forecast_mae_mw": None,
            "operator_forecast_mape": None,
            "test_mae_mw_operator_days": None,
        }
    actual = np.asarray(test["target_mw"], np.float64)[complete]
    return {
        "operator_forecast_days": int(complete.sum()),
        "operator_forecast_mae_mw": mae(actual, forecast[complete]),
        "operator_forecast_mape": mape(actual, forecast[complete]),
        "test_mae_mw_operator_days": mae(actual, predicted_mw[complete]),
    }


def collect(data_dir: Path, split: str, batch_size: int) -> dict[str, np.ndarray]:
    """A whole split in time order: scaled ``inputs``/``target`` and the MW metadata."""
    from stages.common.input_pipelines import series_batches

    parts: dict[str, list] = {}
    for features, target in series_batches(data_dir, split, batch_size, metadata=True).as_numpy_iterator():
        for name, values in {**features, "target": target}.items():
            parts.setdefault(name, []).append(values)
    arrays = {name: np.concatenate(values) for name, values in parts.items()}
    arrays["target_day"] = np.array([d.decode() for d in arrays["target_day"]])
    return arrays


def evaluate_forecasts(
    predicted_scaled: np.ndarray, test: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], scaler: Mapping
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Test metrics of the model and both baselines on the same days; also ``(kept mask, predicted MW)``."""
    profiles = day_profiles(valid["target_day"], valid["inputs_mw"], valid["target_mw"])
    profiles.update(day_profiles(test["target_day"], test["inputs_mw"], test["target_mw"]))
    yesterday = naive_yesterday(test["inputs_mw"])
    last_week = naive_last_week(test["target_day"], profiles)
    keep = ~np.isnan(last_week).any(axis=1)
    if not keep.any():
        raise StageError(f"{DATA_DIR}: no test day has a profile one week earlier in the valid/test windows")
    if not keep.all():
        log.warning("%d test days lack a profile a week earlier: left out of every test metric", int((~keep).sum()))
    predicted_mw = inverse_transform(predicted_scaled, scaler)
    actual_mw = np.asarray(test["target_mw"], np.float64)
    model_mae = mae(actual_mw[keep], predicted_mw[keep])
    baselines = {
        "naive_yesterday_mae_mw": mae(actual_mw[keep], yesterday[keep]),
        "naive_last_week_mae_mw": mae(actual_mw[keep], last_week[keep]),
    }
    squared_mw = float(np.mean((actual_mw[keep] - predicted_mw[keep]) ** 2))
    metrics = {
        "test_days": int(keep.sum()),
        "test_mse_scaled": float(np.mean((np.asarray(test["target"], np.float64)[keep] - predicted_scaled[keep]) ** 2)),
        "test_mse_global_scaler": squared_mw / float(scaler["global"]["scale"]) ** 2,
        "test_mae_mw": model_mae,
        "test_rmse_mw": float(np.sqrt(squared_mw)),
        "test_mape": mape(actual_mw[keep], predicted_mw[keep]),
        **baselines,
        "skill_vs_best_naive": skill(model_mae, list(baselines.values())),
        **operator_forecast(test, keep, predicted_mw),
    }
    return metrics, keep, predicted_mw


def plot_forecast_days(days: Sequence[str], actual_mw: np.ndarray, predicted_mw: np.ndarray, path: Path) -> None:
    """Predicted vs actual 24-hour curves, one panel per day."""
    from stages.common.plotting import plt, save_png

    columns = 3
    rows = -(-len(days) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3 * rows), sharex=True, sharey=True, squeeze=False, layout="constrained"
    )
    hours = np.arange(24)
    for ax, day, actual, predicted in zip(axes.flat, days, actual_mw, predicted_mw, strict=False):
        ax.plot(hours, actual, color="black", label="actual")
        ax.plot(hours, predicted, color="tab:orange", linestyle="--", label="LSTM")
        ax.set(title=f"{day} ({dt.date.fromisoformat(day):%a})", xticks=range(0, 24, 6))
    for ax in axes.flat[len(days) :]:
        ax.axis("off")
    for ax in axes[-1, :]:
        ax.set_xlabel("hour (UTC)")
    for ax in axes[:, 0]:
        ax.set_ylabel("load (MW)")
    axes.flat[0].legend(loc="best", fontsize="small")
    figure.suptitle("train_load_rnn: next-day load on test days")
    save_png(figure, path)


def main() -> None:
    seed, p = load_params(STAGE, TrainLoadRnnParams)

    from stages.common.checkpoints import checkpoint_dir, clear_checkpoints, member_checkpoints, member_seeds
    from stages.common.input_pipelines import read_spec, series_batches
    from stages.common.outputs import atomic_outputs, write_history, write_json

    scaler = json.loads((DATA_DIR / read_spec(DATA_DIR)["scaler"]).read_text(encoding="utf-8"))
    ckpt = checkpoint_dir(CHECKPOINTS, STAGE, p, seed)
    calendar = bool(n_calendar_features(read_spec(DATA_DIR), p))
    test, valid = collect(DATA_DIR, "test", p.batch_size), collect(DATA_DIR, "valid", p.batch_size)
    members = []  # (trainer, history, valid forecast, test forecast) per seed, all scaled
    for k, member_seed in enumerate(member_seeds(seed, p.ensemble)):
        trainer, history = train_model(p, member_seed, DATA_DIR, member_checkpoints(ckpt, k))
        predicted_valid = trainer.predict(model_inputs(valid, calendar, p.batch_size)).astype(np.float64)
        predicted_test = trainer.predict(model_inputs(test, calendar, p.batch_size)).astype(np.float64)
        members.append((trainer, history, predicted_valid, predicted_test))
    trainer, history = members[0][:2]  # the first network's curve and weights stand for the run
    predicted_scaled = np.mean([m[3] for m in members], axis=0)
    predicted_valid_scaled = np.mean([m[2] for m in members], axis=0)
    if p.ensemble == 1:  # Keras' own validation loss, as the early stopping saw it
        valid_mse = trainer.evaluate(series_batches(DATA_DIR, "valid", p.batch_size, calendar=calendar))["val_loss"]
    else:  # the averaged forecast's: no single network's loss describes it
        valid_mse = float(np.mean((np.asarray(valid["target"], np.float64) - predicted_valid_scaled) ** 2))
    metrics, keep, predicted_mw = evaluate_forecasts(predicted_scaled, test, valid, scaler)
    predicted_valid = inverse_transform(predicted_valid_scaled, scaler)
    metrics |= {
        "valid_mse_scaled": valid_mse,
        "valid_mae_mw": mae(valid["target_mw"], predicted_valid),
        "valid_mape": mape(valid["target_mw"], predicted_valid),
        "epochs": len(history),
        "best_epoch": history.best_epoch,
    }
    if p.ensemble > 1:  # what averaging bought: each network alone, on the same days
        test_mw = np.asarray(test["target_mw"], np.float64)[keep]
        metrics |= {
            "member_valid_mape": [mape(valid["target_mw"], inverse_transform(m[2], scaler)) for m in members],
            "member_test_mape": [mape(test_mw, inverse_transform(m[3], scaler)[keep]) for m in members],
            "member_best_epoch": [m[1].best_epoch for m in members],
        }
    log.info(
        "test MAE %.0f MW, MAPE %.2f %% (yesterday %.0f, last week %.0f): skill vs best naive %.3f; "
        "best epoch %d of %d",
        metrics["test_mae_mw"],
        metrics["test_mape"],
        metrics["naive_yesterday_mae_mw"],
        metrics["naive_last_week_mae_mw"],
        metrics["skill_vs_best_naive"],
        metrics["best_epoch"],
        metrics["epochs"],
    )
    if metrics["operator_forecast_mae_mw"] is not None:
        log.info(
            "the operator's day-ahead forecast on %d of those days: MAE %.0f MW, MAPE %.2f %% (this model: %.0f MW)",
            metrics["operator_forecast_days"],
            metrics["operator_forecast_mae_mw"],
            metrics["operator_forecast_mape"],
            metrics["test_mae_mw_operator_days"],
        )

    kept = np.flatnonzero(keep)
    shown = kept[evenly_spaced(len(kept), PLOTTED_DAYS)]
    with atomic_outputs() as out:
        write_json(out.file(METRICS), metrics)
        write_history(out.file(PLOTS / "history.tsv"), history)
        plot_forecast_days(
            list(test["target_day"][shown]),
            test["target_mw"][shown],
            predicted_mw[shown],
            out.file(PLOTS / "forecast_days.png"),
        )
        model_dir = out.directory(MODEL_DIR)
        trainer.model.save_weights(model_dir / "model.weights.h5")
        for k, member in enumerate(members[1:], start=1):
            member[0].model.save_weights(model_dir / f"member-{k}.weights.h5")
    clear_checkpoints(ckpt)


if __name__ == "__main__":
    run_stage(main, STAGE)
