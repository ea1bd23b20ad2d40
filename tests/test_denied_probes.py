"""README: "A secret or folder counts as used only once a call on it succeeded, so denied
probes do not widen an identity's known ground" (nor its peers')."""

from __future__ import annotations

from datetime import timedelta

from secretscope.events import DENIED
from secretscope.features import FeatureExtractor
from secretscope.novelty import UNSEEN
from secretscope.segments import SegmentTable

from helpers import T0, every, make_event

SEGMENTS = SegmentTable([("k8s-prod", "10.20.0.0/16")])
TEAM = ("default", "payments-read")
PROBED = "secret/data/ledger/master"
DIMENSIONS = ("secret_freq_class", "folder_freq_class", "secret_peer_freq_class",
              "folder_peer_freq_class")


def learn_all(fx: FeatureExtractor, events) -> None:
    for e in events:
        fx.learn(fx.observe(e))


def extractor_after(probe_outcome: str) -> tuple[FeatureExtractor, object]:
    """An identity with a usual history and then 20 calls on a secret of another team's folder
    with ``probe_outcome``; returns the extractor and the time after that."""
    fx = FeatureExtractor(SEGMENTS)
    times = every(T0, timedelta(minutes=5), 320)
    learn_all(fx, [make_event(at=t, policies=TEAM, path=f"secret/data/payments/s{i % 3}")
                   for i, t in enumerate(times[:300])])
    learn_all(fx, [make_event(at=t, policies=TEAM, path=PROBED, outcome=probe_outcome)
                   for t in times[300:]])
    return fx, times[-1] + timedelta(minutes=5)


def classes_of_next_read(fx: FeatureExtractor, at) -> dict[str, int]:
    fv = fx.observe(make_event(at=at, policies=TEAM, path=PROBED))
    return {name: fv[name] for name in DIMENSIONS}


def test_denied_probes_leave_the_secret_and_folder_unseen():
    fx, at = extractor_after(DENIED)
    assert classes_of_next_read(fx, at) == {name: UNSEEN for name in DIMENSIONS}


def test_successful_calls_make_them_known():
    """The control: the same calls, succeeding, do widen the known ground."""
    fx, at = extractor_after("success")
    assert all(c != UNSEEN for c in classes_of_next_read(fx, at).values())
