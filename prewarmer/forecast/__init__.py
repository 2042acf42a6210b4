"""Invocation forecasters behind one interface, updated once per minute for all functions at once.

`make_forecaster(name)` builds one by name: `histogram`, `holt-winters`, `arima`, `neural`, or the
`last-value` baseline. See `prewarmer.forecast.base.Forecaster` for the contract and
`prewarmer.forecast.evaluate` for how they are compared.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prewarmer.forecast.base import Forecaster

# Imported on first use (PEP 562): the neural forecaster pulls in torch, which every `prewarmer`
# command would otherwise pay for at start-up just to build its argument parser.
_CLASSES = {
    "histogram": ("histogram", "IdleHistogramForecaster"),
    "holt-winters": ("holtwinters", "HoltWintersForecaster"),
    "arima": ("arima", "ArimaForecaster"),
    "neural": ("neural", "NeuralForecaster"),
    "last-value": ("base", "LastValueForecaster"),
}
_BY_CLASS = {cls: mod for mod, cls in _CLASSES.values()} | {"Forecaster": "base"}


def __getattr__(name: str) -> object:
    if name == "FORECASTERS":
        #: name -> class of every forecaster `make_forecaster` knows (the four forecasters, then the baseline).
        return {key: __getattr__(cls) for key, (_, cls) in _CLASSES.items()}
    if name in _BY_CLASS:
        return getattr(importlib.import_module(f"prewarmer.forecast.{_BY_CLASS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_forecaster(name: str, **kwargs: object) -> Forecaster:
    """A new forecaster by name; keyword arguments go to its constructor. Unknown names raise ValueError."""
    if name not in _CLASSES:
        raise ValueError(f"unknown forecaster {name!r}: choose from {', '.join(_CLASSES)}")
    return __getattr__(_CLASSES[name][1])(**kwargs)  # type: ignore[operator]


__all__ = ["FORECASTERS", "ArimaForecaster", "Forecaster", "HoltWintersForecaster", "IdleHistogramForecaster",
           "LastValueForecaster", "NeuralForecaster", "make_forecaster"]
