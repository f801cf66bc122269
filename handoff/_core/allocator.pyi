"""Allocation strategies over a ResourceLedger."""

import numpy as np
import numpy.typing as npt

from handoff._core.ledger import ResourceLedger

STRATEGIES: tuple[str, ...]

def allocate(
    ledger: ResourceLedger,
    reqs: npt.ArrayLike,
    pinned: npt.ArrayLike | None,
    strategy: str,
    claim: bool = True,
) -> npt.NDArray[np.int64]: ...

def rank_nodes(
    ledger: ResourceLedger,
    req: npt.ArrayLike,
    rows: npt.ArrayLike,
    strategy: str,
) -> npt.NDArray[np.int64]: ...
