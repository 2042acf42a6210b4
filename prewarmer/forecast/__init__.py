"""Invocation forecasters behind one interface, updated once per minute for all functions at once.

`make_forecaster(name)` builds one by name: `histogram`, `holt-winters`, `arima`, `neural`, or the
`last-value` baseline. See `prewarmer.forecast.base.Forecaster` for the contract and
`prewarmer.forecast.evaluate` for how they are compared.
"""

from __future__ import annotations

from prewarmer.forecast.arima import ArimaForecaster
from prewarmer.forecast.base import Forecaster, LastValueForecaster
from prewarmer.forecast.histogram import IdleHistogramForecaster
from prewarmer.forecast.holtwinters import HoltWintersForecaster
from prewarmer.forecast.neural import NeuralForecaster

#: name -> class of every forecaster `make_forecaster` knows (the four forecasters, then the baseline).
FORECASTERS: dict[str, type[Forecaster]] = {
    "histogram": IdleHistogramForecaster,
    "holt-winters": HoltWintersForecaster,
    "arima": ArimaForecaster,
    "neural": NeuralForecaster,
    "last-value": LastValueForecaster,
}


def make_forecaster(name: str, **kwargs: object) -> Forecaster:
    """A new forecaster by name; keyword arguments go to its constructor. Unknown names raise ValueError."""
    try:
        cls = FORECASTERS[name]
    except KeyError:
        raise ValueError(f"unknown forecaster {name!r}: choose from {', '.join(FORECASTERS)}") from None
    return cls(**kwargs)  # type: ignore[arg-type]


__all__ = ["FORECASTERS", "ArimaForecaster", "Forecaster", "HoltWintersForecaster", "IdleHistogramForecaster",
           "LastValueForecaster", "NeuralForecaster", "make_forecaster"]
