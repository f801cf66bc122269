"""The node's execution: the pure job state machine, the worker pool and the worker process."""
