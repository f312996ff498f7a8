"""Persistence: the models, the engine, the worker's statements (queue) and every other query
(repositories)."""
