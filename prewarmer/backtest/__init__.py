"""`prewarmer backtest`: replay what a real Prometheus recorded through the simulator, with every policy.

Split by job: `promapi` (the Prometheus HTTP API client: instant and range queries, clear errors),
`counters` (counter samples into per-minute increments, counter resets, histogram quantiles; pure numpy),
`presets` (the metrics of OpenFaaS and Knative, or a user's PromQL), `source` (reads one range into a
workload the replay takes, with where every per-function figure came from), `runner` (replays one
policy and records cold starts and instances over time), `report` (ranking, tables, forecast quality,
plot, JSON) and `cli` (the command line).
"""
