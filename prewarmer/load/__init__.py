"""Load tests against a live gateway: schedules of requests (`schedule`), their open-loop replay with
Locust (`openloop`, Locust-only; `timing` and `results` are its pure parts) and `prewarmer loadtest`
(`cli`), which starts Redis, the gateway and optionally the sidecar around a Locust run.

Nothing here imports Locust or gevent except `openloop`: Locust monkey-patches the standard library
on import, which the CLI process and the test process must not suffer.
"""
