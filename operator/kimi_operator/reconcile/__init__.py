"""Desired vs observed -> actions and status. Pure: no API calls here (kube.py makes them; controller.py glues).

One function, `decide`, is called for every trigger (create, update, resume, child change, periodic resync):
the operator is level-based. A reconcile that finds nothing to change returns no applies, no deletes, no status
and no events, so an idle KimiDeployment costs zero API writes.

- `types`: Observed (what decide reads), Actions (what it returns), Event.
- `weights_state`: the weights state machine (WeightsState) and the pinned commit.
- `diff`: desired vs observed children -> applies and deletes (drift compared by value).
- `status`: conditions, Events, the status patch (through the status models), the gateway's status.
- `startup`: a starting replica's phase, progress, ETA and stall (status.startup), from its pod and its log.
- `decide`: the decision itself.
"""

from kimi_operator.reconcile.decide import decide
from kimi_operator.reconcile.diff import is_subset
from kimi_operator.reconcile.startup import POLL_SECONDS as STARTUP_POLL_SECONDS
from kimi_operator.reconcile.startup import starting_leaders
from kimi_operator.reconcile.status import failing_pod, ready_leaders
from kimi_operator.reconcile.types import Actions, Event, Observed
from kimi_operator.reconcile.weights_state import (
    FETCH_REQUEUE_SECONDS,
    WeightsState,
    claim_uid,
    pinned_commit,
    pinned_draft_commit,
)

__all__ = [
    "FETCH_REQUEUE_SECONDS",
    "STARTUP_POLL_SECONDS",
    "Actions",
    "Event",
    "Observed",
    "WeightsState",
    "claim_uid",
    "decide",
    "failing_pod",
    "is_subset",
    "pinned_commit",
    "pinned_draft_commit",
    "ready_leaders",
    "starting_leaders",
]
