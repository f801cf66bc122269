"""Streaming pipelines (``handoff.stream``): the driver-side pipeline object."""
