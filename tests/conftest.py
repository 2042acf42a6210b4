import pytest
from redisproc import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for this test only; `redis_server.url`, `.restart()`, `.kill()`, `.start()`."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
