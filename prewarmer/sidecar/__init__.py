"""The live sidecar: Redis Stream events → per-function observations → policy → desired replicas → actuator.

Only the clock, the event source and the actuator differ from the replay simulator; the
observation, forecaster and policy code are the same objects.
"""
