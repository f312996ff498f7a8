"""Persistence: the models, every query (repositories) and the engine."""
