"""``secretscope._native.EventKeys`` against the Python functions it stands for in
``FeatureExtractor.derive``: ``features.hour_slots``, ``novelty.dimension_keys`` and
``novelty.tagged_keys``, on a simulated fleet's events and on generated ones (any text, lone
surrogates included, any time from year 1 to 9999)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from secretscope._native import EventKeys
from secretscope.events import AccessEvent
from secretscope.features import hour_slots
from secretscope.novelty import agent_family, dimension_keys, tagged_keys
from secretscope.simulate import SimulationSpec, simulate
from secretscope.sources.files import replay

from helpers import make_event


def python_keys(event: AccessEvent, segment: str, secret_access: bool) -> tuple:
    keys = dimension_keys(event, segment, secret_access)
    return (*hour_slots(event.ts), keys, tagged_keys(keys))


def test_a_simulated_fleet_has_the_keys_python_gives(tmp_path):
    log = tmp_path / "sim.log"
    simulate(SimulationSpec(days=2, seed=4, target_calls=4000), log)
    native = EventKeys(agent_family)
    events = [e for e in replay([log]) if type(e) is AccessEvent]
    assert len(events) > 3000
    for n, event in enumerate(events):
        segment, access = ("corp", "dmz", "")[n % 3], n % 4 != 0
        assert native.keys(event, segment, access) == python_keys(event, segment, access)


texts = st.one_of(st.text(max_size=10), st.sampled_from(
    ["", "/", "a/b/c", "secret/", "ns1", "\ud800", "x/\udcff", "Mozilla/5.0 Firefox/1",
     "vault-agent/1.2", "curl"]))


@settings(max_examples=500, deadline=None)
@given(ts=st.floats(-62_135_596_800.0, 253_402_300_799.0, allow_nan=False),
       secret=texts, operation=texts, address=texts, agent=texts, method=texts, namespace=texts,
       mount=texts, segment=texts, access=st.booleans())
def test_generated_events_have_the_keys_python_gives(ts, secret, operation, address, agent,
                                                     method, namespace, mount, segment, access):
    event = make_event(ts=ts, secret=secret, operation=operation, remote_address=address,
                       user_agent=agent, auth_method=method, namespace=namespace,
                       mount_type=mount)
    native = EventKeys(agent_family)
    for _ in range(2):  # and again from its caches
        assert native.keys(event, segment, access) == python_keys(event, segment, access)


def test_past_the_cache_bounds_keys_stay_right():
    """Attacker-made values fill the bounded caches: they are emptied (or, for user agents,
    stop growing) and every answer stays the same."""
    native = EventKeys(agent_family)
    for n in range(25_000):
        event = make_event(secret=f"s/{n}", user_agent=f"agent-{n}/1", namespace=f"ns{n % 50}",
                           mount_type=f"m{n}")
        assert native.keys(event, "corp", True) == python_keys(event, "corp", True)
