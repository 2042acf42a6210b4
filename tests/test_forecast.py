"""Forecasters on series with known answers, checkpoint round trips, the evaluation and `forecast-eval`."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from prewarmer.forecast import FORECASTERS, make_forecaster
from prewarmer.forecast.arima import ArimaForecaster
from prewarmer.forecast.cli import add_forecast_eval_parser, cmd_forecast_eval, main
from prewarmer.forecast.evaluate import evaluate
from prewarmer.forecast.histogram import IdleHistogramForecaster
from prewarmer.forecast.holtwinters import HoltWintersForecaster
from prewarmer.forecast.neural import NeuralForecaster
from prewarmer.workloads.base import FunctionTable, MinuteCountWorkload, TraceError

SHARED_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "azure2019-d01-sample1000"
STATISTICAL = ("histogram", "holt-winters", "arima")


def periodic(n_functions: int, minutes: int, period: int = 10, count: int = 1) -> np.ndarray:
    """Function f is invoked `count` times at every minute m with (m + f) % period == 0."""
    m = np.arange(minutes)[None, :] + np.arange(n_functions)[:, None]
    return np.where(m % period == 0, count, 0).astype(np.int32)


def feed(fc, counts: np.ndarray, start_minute: int = 0) -> None:
    fc.reset(counts.shape[0], start_minute=start_minute)
    for m in range(counts.shape[1]):
        fc.update(counts[:, m])


def trained_neural(counts: np.ndarray, **kw) -> NeuralForecaster:
    fc = NeuralForecaster(hidden=32, samples_per_epoch=12_000, **kw)
    fc.fit(counts, epochs=3, seed=0)
    return fc


def minute_workload(counts: np.ndarray) -> MinuteCountWorkload:
    n = counts.shape[0]
    table = FunctionTable(names=[f"f{i}" for i in range(n)], apps=np.arange(n, dtype=np.int32),
                          app_names=[f"a{i}" for i in range(n)], memory_mb=np.full(n, 128.0),
                          cold_start_s=np.full(n, np.nan), triggers=["others"] * n)
    return MinuteCountWorkload(table, counts, np.tile([1.0, 2, 5, 10, 20, 50, 100], (n, 1)))


# ---------------------------------------------------------------------- known answers
def test_histogram_periodic_hazard() -> None:
    fc = IdleHistogramForecaster()
    counts = periodic(1, 200)  # invoked at minutes 0, 10, ..., 190
    feed(fc, counts[:, :191])  # just after an invocation
    assert fc.prob_invoked(5)[0] < 0.01 and fc.prob_invoked(9)[0] < 0.01
    assert fc.prob_invoked(10)[0] > 0.99
    pred = fc.predict(20)[0]
    np.testing.assert_allclose(pred, np.where(np.arange(1, 21) % 10 == 0, 1.0, 0.0), atol=1e-9)
    for m in range(191, 200):  # right before the next period
        fc.update(counts[:, m])
    assert fc.prob_invoked(1)[0] > 0.99
    np.testing.assert_allclose(fc.predict(1)[0], [1.0])


def test_histogram_falls_back_to_rate_with_few_gaps() -> None:
    fc = IdleHistogramForecaster()
    counts = np.zeros((1, 30), np.int32)
    counts[0, [5, 25]] = 1  # one gap only
    feed(fc, counts)
    p1, p10 = fc.prob_invoked(1)[0], fc.prob_invoked(10)[0]
    assert 0 < p1 < p10 < 1
    np.testing.assert_allclose(fc.predict(3)[0], fc.rate[0])


@pytest.mark.parametrize("name", ["holt-winters", "arima"])
def test_statistical_periodic_predicts_mean_rate(name: str) -> None:
    fc = make_forecaster(name)
    counts = periodic(3, 400)
    feed(fc, counts)
    assert fc.fits > 0
    preds = []
    for m in range(400, 420):  # average over two periods: the phase is not what these models see
        preds.append(fc.predict(1)[:, 0])
        fc.update(periodic(3, m + 1)[:, m])
    assert np.all(np.abs(np.mean(preds, axis=0) - 0.1) < 0.05)
    p = fc.prob_invoked(10)
    assert np.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize("name", STATISTICAL)
def test_constant_rate(name: str) -> None:
    rng = np.random.default_rng(1)
    counts = np.vstack([np.full(400, 5), rng.poisson(5.0, 400), rng.poisson(40.0, 400)]).astype(np.int32)
    fc = make_forecaster(name)
    feed(fc, counts)
    pred = fc.predict(5)
    assert pred.shape == (3, 5)
    np.testing.assert_allclose(pred[0], 5.0, atol=0.05)  # exact series: every model ends at the rate
    assert np.all(np.abs(pred[1] - 5.0) < 2.0)
    assert np.all(np.abs(pred[2] - 40.0) < 8.0)
    assert np.all(fc.prob_invoked(1) > 0.95)


@pytest.mark.parametrize("name", [*FORECASTERS])
def test_all_zero_predicts_nothing_without_warnings(name: str) -> None:
    counts = np.zeros((4, 300), np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc = trained_neural(counts) if name == "neural" else make_forecaster(name)
        feed(fc, counts)
        pred, prob = fc.predict(12), fc.prob_invoked(10)
    tol = 0.05 if name == "neural" else 0.0  # a network only approximates zero
    assert pred.shape == (4, 12) and np.all(pred >= 0) and np.all(pred <= tol)
    assert prob.shape == (4,) and np.all(prob >= 0) and np.all(prob <= tol)


@pytest.mark.parametrize("name", STATISTICAL)
def test_sparse_single_function_and_sizes(name: str) -> None:
    counts = np.zeros((1, 300), np.int32)
    counts[0, [3, 150, 299]] = [1, 200, 2]
    fc = make_forecaster(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(fc, counts)
    assert fc.predict(3).shape == (1, 3) and fc.prob_invoked(3).shape == (1,)
    fc.reset(0)
    fc.update(np.zeros(0))
    assert fc.predict(4).shape == (0, 4) and fc.prob_invoked(2).shape == (0,)


@pytest.mark.parametrize("name", STATISTICAL)
def test_many_functions_bounds(name: str) -> None:
    rng = np.random.default_rng(2)
    rates = rng.lognormal(-2, 2, 300)
    counts = rng.poisson(rates[:, None] * (rng.random((300, 200)) < 0.4)).astype(np.int32)
    fc = make_forecaster(name, **({"max_fits_per_call": 3} if name != "histogram" else {}))
    feed(fc, counts)
    pred = fc.predict(15)
    assert pred.shape == (300, 15) and np.isfinite(pred).all() and (pred >= 0).all()
    for k in (1, 5, 30):
        p = fc.prob_invoked(k)
        assert p.shape == (300,) and ((p >= 0) & (p <= 1)).all()
    assert np.all(fc.prob_invoked(5) >= fc.prob_invoked(1) - 1e-12)


def test_bad_input() -> None:
    fc = make_forecaster("histogram")
    fc.reset(3)
    with pytest.raises(ValueError, match="shape"):
        fc.update(np.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        fc.update(np.array([1, -1, 0]))
    with pytest.raises(ValueError, match="horizon"):
        fc.predict(0)
    with pytest.raises(ValueError, match="unknown forecaster"):
        make_forecaster("prophet")
    with pytest.raises(RuntimeError, match="not trained"):
        nf = NeuralForecaster()
        nf.reset(2)
        nf.predict(1)


# ---------------------------------------------------------------------- agreement with statsmodels
def test_holt_winters_seasonal_matches_statsmodels() -> None:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    rng = np.random.default_rng(3)
    minutes = np.arange(180)
    pattern = np.where(minutes % 60 < 10, 20.0, 2.0)
    counts = rng.poisson(pattern)[None, :].astype(np.int32)
    fc = HoltWintersForecaster(season=60, first_fit=120, refit_every=1000)
    feed(fc, counts[:, :120])  # the fit runs on the update of minute 119
    assert fc.seasonal[0] and fc.fits == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ExponentialSmoothing(counts[0, :120].astype(float), trend=None, seasonal="add", seasonal_periods=60,
                                   initialization_method="heuristic").fit()
    np.testing.assert_allclose(fc.predict(60)[0], np.maximum(res.forecast(60), 0), rtol=1e-6, atol=1e-6)
    for m in range(120, 180):
        fc.update(counts[:, m])
    pred = fc.predict(60)[0]
    assert pred[:10].mean() > 12 and pred[10:].mean() < 5  # the next hour starts busy


def test_arima_fit_matches_statsmodels_forecast() -> None:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    rng = np.random.default_rng(4)
    x = np.zeros(240)
    for t in range(1, 240):  # AR(1) around 20
        x[t] = 0.7 * x[t - 1] + rng.normal(0, 3)
    counts = np.maximum(np.round(20 + x), 0).astype(np.int32)[None, :]
    fc = ArimaForecaster(first_fit=240, refit_every=10_000)
    feed(fc, counts)
    assert fc.fitted[0] and 0.3 < fc.phi[0] < 0.95
    y = counts[0].astype(float)
    mu, sd = y.mean(), y.std()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = SARIMAX((y - mu) / sd, order=(1, 0, 1), trend="n", concentrate_scale=True).fit(disp=False,
                                                                                            cov_type="none")
    np.testing.assert_allclose(fc.predict(5)[0], mu + sd * res.forecast(5), rtol=1e-6)


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", [*FORECASTERS])
def test_state_dict_round_trip(name: str) -> None:
    rng = np.random.default_rng(5)
    counts = rng.poisson(rng.lognormal(0, 1.5, 12)[:, None] * (rng.random((12, 260)) < 0.5)).astype(np.int32)
    kw = {"max_fits_per_call": 2} if name in ("holt-winters", "arima") else {}
    fc = trained_neural(counts[:, :200]) if name == "neural" else make_forecaster(name, **kw)
    feed(fc, counts[:, :200], start_minute=30)
    state = fc.state_dict()
    assert state["name"] == name
    json.dumps(state["config"])  # configuration is plain python
    other = make_forecaster(name)
    other.load_state_dict(state)
    fc.update(counts[:, 200])  # the original moves on; the saved state must not
    other.update(counts[:, 200])
    for m in range(201, 260):  # identical afterwards too, refit schedule included
        np.testing.assert_array_equal(other.predict(7), fc.predict(7))
        np.testing.assert_array_equal(other.prob_invoked(5), fc.prob_invoked(5))
        other.update(counts[:, m])
        fc.update(counts[:, m])
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_forecaster("histogram" if name != "histogram" else "arima").load_state_dict(state)


# ---------------------------------------------------------------------- neural
def test_neural_learns_periodic_and_is_deterministic() -> None:
    counts = periodic(16, 300, period=10, count=3)
    a = NeuralForecaster(hidden=32, samples_per_epoch=6000)
    loss = a.fit(counts, epochs=4, seed=7)
    assert loss[-1] < 0.5 * loss[0]
    b = NeuralForecaster(hidden=32, samples_per_epoch=6000)
    b.fit(counts, epochs=4, seed=7)
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    assert a.n_parameters < 100_000
    assert not a.time_of_day  # 300 training minutes cannot teach a time of day
    feed(a, periodic(16, 200, period=10, count=3))
    due = ((np.arange(200, 201)[None, :] + np.arange(16)[:, None]) % 10 == 0)[:, 0]  # invoked in the next minute
    p1 = a.prob_invoked(1)
    assert p1[due].min() > 0.5 and p1[~due].max() < 0.5
    pred = a.predict(12)
    assert pred.shape == (16, 12) and np.array_equal(pred[:, 10], pred[:, 9])  # beyond H: the last step repeated
    assert np.all(a.prob_invoked(12) >= a.prob_invoked(10) - 1e-12)


# ---------------------------------------------------------------------- evaluation and CLI
def test_evaluate_returns_every_key() -> None:
    rng = np.random.default_rng(6)
    counts = np.vstack([periodic(4, 200), rng.poisson(2.0, (4, 200)), np.zeros((2, 200))]).astype(np.int32)
    res = evaluate(minute_workload(counts), (0, 140), (140, 200), list(STATISTICAL) + ["neural"], ks=(1, 5),
                   neural_epochs=1)
    assert list(res) == [*STATISTICAL, "neural", "last-value"]
    for r in res.values():
        assert r["mae"] >= 0
        for k, n in ((1, 60), (5, 56)):
            s = r[f"k={k}"]
            assert set(s) == {"accuracy", "precision", "recall", "base_rate", "brier", "n"}
            assert s["n"] == 10 * n and 0 <= s["accuracy"] <= 1 and 0 < s["base_rate"] < 1
        assert {"update_ms_mean", "update_ms_p50", "update_ms_max", "fit_s", "ticks"} <= set(r["timing"])
        assert r["timing"]["ticks"] == 200
    assert res["histogram"]["k=1"]["accuracy"] > 0.95  # periodic and constant rows are easy
    with pytest.raises(ValueError, match="overlap"):
        evaluate(minute_workload(counts), (0, 140), (100, 200), ["histogram"])
    with pytest.raises(ValueError, match="out of range"):
        evaluate(minute_workload(counts), (0, 140), (140, 300), ["histogram"])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_forecast_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["forecast-eval", *argv])


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason=f"shared trace not found at {SHARED_TRACE}")
def test_cli_on_shared_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fe.json"
    args = _args("--trace", str(SHARED_TRACE), "--functions", "50", "--train-minutes", "0:240",
                 "--test-minutes", "240:360", "--k", "1,5", "--epochs", "2", "--quiet", "--json", str(out))
    assert args.func is cmd_forecast_eval
    assert cmd_forecast_eval(args) == 0
    printed = capsys.readouterr().out
    assert "histogram" in printed and "k=5 rec" in printed
    doc = json.loads(out.read_text())
    assert doc["test_minutes"] == [240, 360] and doc["ks"] == [1, 5]
    assert list(doc["results"]) == ["histogram", "holt-winters", "arima", "neural", "last-value"]
    assert doc["workload"]["functions"] == 50
    # Every forecaster beats guessing "never invoked" within 5 minutes and is no worse than 2x last-value's MAE.
    base = doc["results"]["last-value"]
    for name, r in doc["results"].items():
        assert r["k=5"]["accuracy"] > 1 - r["k=5"]["base_rate"], name
        assert r["mae"] < 2 * base["mae"], name


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(SHARED_TRACE)
    with pytest.raises(ValueError, match="must start at or after"):
        cmd_forecast_eval(_args("--trace", trace, "--train-minutes", "0:720", "--test-minutes", "600:900"))
    with pytest.raises(ValueError, match="--k"):
        cmd_forecast_eval(_args("--trace", trace, "--k", "1,x"))
    with pytest.raises(ValueError, match="unknown forecaster"):
        cmd_forecast_eval(_args("--trace", trace, "--forecaster", "prophet"))
    with pytest.raises(TraceError, match="no such file"):
        cmd_forecast_eval(_args("--trace", str(tmp_path / "missing")))
    assert main(["--trace", str(tmp_path / "missing")]) == 2
    assert "prewarmer: error:" in capsys.readouterr().err
