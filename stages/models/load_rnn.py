"""Tutorial 09's network: the next day's 24 hourly loads from the last ``look_back`` days.

``LSTM(16) -> Dense(16, relu) -> Dense(24)`` over the scaled 24-hour profiles
of the input days (``build_load_rnn``; widths are arguments, the stage's
params). With ``n_calendar`` > 0 it also takes each day's calendar flags
(weekday one-hot, national holiday, day before / after a holiday): each input
day's flags join its 24 hours at the LSTM's step, and the *target* day's flags
are concatenated to the LSTM's output before ``Dense(16, relu)``. With
``n_calendar=0`` it is the tutorial's network exactly. The outputs are scaled
loads; the stage turns them back into MW. No SavedModel: the stage keeps the
weights only.
"""

from __future__ import annotations


def build_load_rnn(look_back: int, *, lstm_units: int, dense_units: int, n_calendar: int = 0):
    """The tutorial's network: the LSTM's last output -> a hidden layer -> the 24 hours.

    Takes ``days`` float32 (b, look_back, 24) and gives (b, 24). With ``n_calendar``
    > 0 it takes ``{"days", "calendar"}``: ``calendar`` (b, look_back + 1, n_calendar)
    holds the input days' flags, concatenated to their 24 hours at each LSTM step,
    then the target day's, concatenated to the LSTM's output.
    """
    import keras

    if n_calendar:
        days = keras.Input((look_back, 24), name="days")  # (b, look_back days, 24 scaled hours)
        calendar = keras.Input((look_back + 1, n_calendar), name="calendar")  # (b, look_back + 1, n_calendar)
        steps = keras.layers.Concatenate(name="day_and_calendar")([days, calendar[:, :look_back]])
        # steps: (b, look_back, 24 + n_calendar)
        summary = keras.layers.LSTM(lstm_units, name="lstm")(steps)  # (b, lstm_units)
        known = keras.layers.Concatenate(name="with_target_calendar")([summary, calendar[:, look_back]])
        # known: (b, lstm_units + n_calendar)
        hidden = keras.layers.Dense(dense_units, activation="relu", name="hidden")(known)  # (b, dense_units)
        out = keras.layers.Dense(24, name="next_day")(hidden)  # (b, 24)
        return keras.Model({"days": days, "calendar": calendar}, out, name="load_rnn")
    return keras.Sequential(
        [
            keras.Input((look_back, 24), name="days"),  # (b, look_back days, 24 scaled hours)
            keras.layers.LSTM(lstm_units, name="lstm"),  # (b, lstm_units)
            keras.layers.Dense(dense_units, activation="relu", name="hidden"),  # (b, dense_units)
            keras.layers.Dense(24, name="next_day"),  # (b, 24)
        ],
        name="load_rnn",
    )
