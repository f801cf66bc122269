"""The node's data plane: value store, shared memory, spill, sweep, fetching values peer to peer."""
