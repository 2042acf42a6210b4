"""Load tests against a live gateway: schedules of requests (`schedule`), their open-loop replay with
Locust (`openloop`, Locust-only; `timing` and `results` are its pure parts) and `prewarmer loadtest`,
which starts Redis, the gateway and optionally the sidecar around a Locust run: `cli` (the command line),
`schedule_options` (the schedule it asks for), `loadtest` (the whole command), `run` (one run),
`processes` (children and their clean-up), `services` (Redis, gateway, sidecar), `gateway_metrics`
(sampling `/metrics`), `report` (table, ratios, plot) and `errors`.

Nothing here imports Locust or gevent except `openloop`: Locust monkey-patches the standard library
on import, which the CLI process and the test process must not suffer.
"""
