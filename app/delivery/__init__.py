"""Delivery: the pure orchestrator, the retry decision and the worker loop that feeds them."""
