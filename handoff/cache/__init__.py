"""The result cache: lineage keys (keys.py), each node's disk cache (disk.py), the node's
part that answers peers (service.py) and the driver's plan for one run (plan.py)."""

from handoff.cache.disk import DiskCache
from handoff.cache.keys import KeyBuilder, lineage_keys

__all__ = ["DiskCache", "KeyBuilder", "lineage_keys"]
