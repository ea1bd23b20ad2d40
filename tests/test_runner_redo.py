"""The runner learns every row of a batch at once and takes back only what a flagged row's group
saw: the redo after a flagged row costs work in proportion to that group's rows, not to the rest
of the batch, and the findings are those of one event at a time."""

from __future__ import annotations

from datetime import timedelta

from secretscope.config import load_settings
from secretscope.findings import to_ocsf
from secretscope.runner import Pipeline

from helpers import T0, make_event

BUSY_ROWS = 600  # rows of an unrelated, busy peer group in the same batch
ADMIN_ROWS = 6


def stream() -> list:
    """Five services of one peer group read all the time; an admin (its own peer group, the
    root policy) makes a root-token call early on, then a few more calls."""
    events = []
    for i in range(BUSY_ROWS):
        events.append(make_event(at=T0 + timedelta(seconds=6 * i), identity=f"entity:svc-{i % 5}",
                                 display_name=f"svc-{i % 5}", policies=("default", "payments"),
                                 path=f"secret/data/payments/s{i % 40}"))
        if i % 50 == 10 and len([e for e in events if e.identity == "entity:admin"]) < ADMIN_ROWS:
            events.append(make_event(at=T0 + timedelta(seconds=6 * i + 1),
                                     identity="entity:admin", display_name="admin",
                                     policies=("root",), operation="update",
                                     path="sys/policies/acl/payments"))
    return events


def run(events, size: int) -> tuple[Pipeline, list]:
    p = Pipeline(load_settings())
    out = []
    for i in range(0, len(events), size):
        out += p.process_batch(events[i:i + size])
    out += p.finish()
    return p, [to_ocsf(f) for f in out]


def test_a_flagged_row_redoes_only_its_group():
    events = stream()
    admin = [i for i, e in enumerate(events) if e.identity == "entity:admin"]
    assert len(admin) == ADMIN_ROWS and admin[0] < 20  # flagged early: most of the batch after it
    p, versions = run(events, len(events))
    assert any(d["finding_info"]["title"].startswith("Root token used") for d in versions)
    st = p.stats
    n = len(events)
    # every admin row raises (root token): each takes back the admin's later learns at most once
    # for the redo and once to be explained against its own baseline
    assert st.unlearns <= 2 * ADMIN_ROWS
    assert st.derives - n <= ADMIN_ROWS
    assert st.learns - n <= ADMIN_ROWS
    # the busy group's rows after the flagged row were not derived or scored again
    assert st.derives < n + BUSY_ROWS // 10
    assert st.scored < n + BUSY_ROWS // 10


def test_the_redo_gives_the_findings_of_one_event_at_a_time():
    events = stream()
    _, one = run(events, 1)
    for size in (7, 256, len(events)):
        _, batched = run(events, size)
        assert batched == one, f"batch size {size}"


def test_redo_work_per_event_does_not_grow_with_the_batch_size():
    """Many flagged rows (every admin call) among busy rows: the learns, unlearns and derives
    per event stay bounded by the flagged groups' rows at any batch size."""
    events = stream()
    n = len(events)
    for size in (16, 256, n):
        p, _ = run(events, size)
        extra = (p.stats.learns - n) + p.stats.unlearns + (p.stats.derives - n)
        assert extra <= 4 * ADMIN_ROWS, f"batch size {size}: {extra} extra learns and derives"
