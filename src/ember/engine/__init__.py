"""Scheduling and the engine loop."""
