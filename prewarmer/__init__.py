"""prewarmer: per-function agents that prewarm serverless instances ahead of demand."""

__version__ = "0.1.0"
