"""Invocation events on Redis Streams: the schema, a producer, a sharded consumer group, a dead-letter stream."""
