"""The allocation strategy names, in one place for the compiled allocator and its twin."""

STRATEGIES: tuple[str, ...] = ("first_available", "load_balanced", "cost_optimized")
