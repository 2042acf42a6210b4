import os

import pytest
from redisproc import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for this test only; `redis_server.url`, `.restart()`, `.kill()`, `.start()`."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PREWARMER_* variable of the machine running the tests may leak into the parsers' defaults."""
    for name in list(os.environ):
        if name.startswith("PREWARMER_"):
            monkeypatch.delenv(name)
    return monkeypatch
