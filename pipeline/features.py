"""Per-identity features, driven by event time.

The same code serves the streaming pipeline and notebooks: :class:`FeatureExtractor` is fed one
event at a time (``observe``) and told afterwards which events may become baseline (``learn``);
:func:`feature_frame` runs the same two calls over an iterable and returns a pandas DataFrame.

Two kinds of state per identity:

* **windows** (request counts, distinct secrets, denials) describe what the identity is doing
  now; ``observe`` updates them for every event, anomalous or not.
* **baseline** (hour-of-week profile, how often it used each secret, folder, segment, address,
  user agent, auth method and mount, usual rates and gaps) describes what is normal for it, and
  its **peer group** (identities with the same policies, ``secretscope.novelty``) what is normal for
  its role; only ``learn`` updates it, and the pipeline calls ``learn``
  only for events that raised no finding, so an attacker never becomes the baseline.

Windows use event time (``AccessEvent.ts``), never the wall clock, so a replay of last month
gives the features the live run saw.
"""

from __future__ import annotations

import math
import re
from sys import intern as _intern
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from secretscope.events import DENIED, SUCCESS, AccessEvent
from secretscope.identity import Dormant, IdentityState, Undo
from secretscope.lineage import FEATURE_VALUES as _LINEAGE_VALUES, LineageTracker
from secretscope._native import EventKeys
from secretscope.novelty import (ENVIRONMENT, PLACE, SECRET, SEGMENT, UNSEEN, USER_AGENT,
                              PeerGroup, agent_family, peer_key, tagged, tagged_keys)
from secretscope.segments import UNKNOWN, SegmentTable

if TYPE_CHECKING:
    import pandas as pd

FEATURE_NAMES: tuple[str, ...] = (
    # windows: what the identity is doing now
    "requests_count_1m",
    "requests_count_1h",
    "requests_count_24h",
    "secrets_distinct_1h",
    "secrets_distinct_24h",
    "secrets_ratio_1h",  # secrets_distinct_1h over the identity's usual (secrets_baseline_1h + 1)
    "denied_count_5m",
    "denied_ratio_1h",
    "denied_distinct_1h",  # distinct secrets denied in the last hour
    "login_failed_count_5m",
    "list_to_read_ratio_1h",  # lists per successful read in the last hour (discovery vs. use)
    "dynamic_creds_count_10m",  # requests for dynamic credentials (*/creds/*) in 10 minutes
    # time of day and week against the identity's (and its peers') profile
    "hour_of_week_share",  # share of the identity's history in this hour of the week (+-1 h)
    "hour_of_day_share",  # share in this hour of the day (+-1 h), any weekday
    "hour_of_day_peer_share",  # the same share among the identity's peers
    "working_hours_distance",  # hours to the nearest learned working hour (0 inside them)
    # novelty for the identity: first seen flags and frequency classes (0 frequent .. 3 unseen)
    "segment_share",  # share of the identity's history from this network segment
    "segment_first_seen",
    "secret_first_seen",
    "user_agent_first_seen",  # user-agent family, so version upgrades are not new
    "policy_write_first_seen",  # 1.0 if this writes an ACL policy and the identity never did
    "policy_write_peer_first_seen",  # ... and no identity with the same policies ever did
    "policy_write_own",  # 1.0 if this writes an ACL policy the identity itself holds
    "policy_writer_role",  # 1.0 if the identity or its peers write policies as part of the job
    "secret_freq_class",
    "folder_freq_class",
    "operation_freq_class",
    "segment_freq_class",
    "ip_freq_class",
    "user_agent_freq_class",
    "auth_method_freq_class",
    "mount_freq_class",
    "novelty_score",  # strongest unseen value, discounted by the identity's rate of new values
    # novelty against the peer group (identities with the same policies)
    "secret_peer_freq_class",
    "folder_peer_freq_class",
    "segment_peer_freq_class",
    "user_agent_peer_freq_class",
    "peer_novelty_score",  # unseen by the identity AND its peers, discounted by the peers' rate
    "secrets_known",  # distinct secrets in the identity's baseline (over history: how often new)
    "folders_known",  # distinct secret folders in the identity's baseline (breadth of its work)
    "peer_folders_known",  # ... in its peer group's (a platform role reads everyone's)
    # sequences: this event completes a suspicious pair within its window
    "seq_list_then_read",  # a read within 15 min after a burst of lists
    "seq_policy_change_then_read",  # a read within 1 h after a policy write
    "seq_denied_then_success",  # a success within 15 min after a burst of denials/failed logins
    "seq_token_create_then_read",  # a read within 1 h after creating a token
    "seq_new_segment_login_then_read",  # a read within 1 h after a login from a new segment
    # sessions and role boundaries
    "networks_15m",  # networks (segments; an unlisted address by its /16) used in 15 minutes
    # 1.0 if the identity never called from this network alone: a network becomes familiar only
    # through calls made while the identity used no other for an hour (_native.ALONE), so a
    # thief's calls right after its owner stopped working do not make it a habit
    "network_unfamiliar",
    "role_new_secrets_1h",  # distinct secrets read in 1 h that neither it nor its peers had used
    "role_new_secrets_24h",  # ... in 24 h (a slow campaign adds one an hour)
    "environment_crossing",  # 1.0: reads a production secret, all its reads were elsewhere
    "folder_in_role_tree",  # 1.0: a folder new for the role, above or below one it works in
    # AppRole lineage (secretscope.lineage): who may mint a role's secret ids, and what followed
    "secret_id_mint_unmanaged",  # mints a secret id for a role neither it nor its peers managed
    "login_minted_by_outsider",  # an AppRole login within 24 h after such a mint for its role
    "seq_outsider_mint_then_read",  # a read by that login's session within 1 h after it
    # the baseline itself
    "requests_baseline_1h",  # usual requests_count_1h for the identity (EWMA over its history)
    "secrets_baseline_1h",  # usual secrets_distinct_1h for the identity
    "history_events",  # events already in the identity's baseline
    "history_days",  # event time since the identity's first baseline event
    "idle_days",  # event time since the identity's previous call of any kind (dormancy)
    "periodicity",  # 1 for a clockwork caller, towards 0 for an irregular one
    "interval_deviation",  # how far this gap is from the identity's usual gap (robust z, log)
    "peer_history",  # events in the peer group's baseline
    "peer_members",  # identities in the peer group
)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_REQUESTS_1H = INDEX["requests_count_1h"]
_SECRETS_1H = INDEX["secrets_distinct_1h"]

_POLICY_PREFIXES = ("sys/policy/", "sys/policies/acl/")
_WRITE_OPS = frozenset({"create", "update", "delete"})
_NON_SECRET_PREFIXES = ("sys/", "auth/", "identity/", "cubbyhole/")
# (bursts, sessions and the prefixes above are also the windows' own, in compiled code:
# secretscope._native exports its values, and tests/test_native_windows.py compares them)
_LIST_FOLLOW, _DENIED_FOLLOW, _CHANGE_FOLLOW = 900.0, 900.0, 3600.0  # how long a mark lasts
PRODUCTION = "production"  # the environment of a path no `environments` entry matches
_PRODUCTION = tagged(ENVIRONMENT, PRODUCTION)  # its key among the counts (novelty.tagged)
_ENV_CACHE_MAX = 100_000
ROLE_NEW_KEEP = 1024  # secrets new for the role kept per identity: thresholds are far below
_DAY = 86400.0
_SWEEP = 3600.0  # event time between looks for idle identities


class FeatureVector(msgspec.Struct, frozen=True, gc=False):
    """An event with its features; ``values`` is aligned with :data:`FEATURE_NAMES`.
    ``keys`` are its values per novelty dimension (see ``secretscope.novelty``).
    (A frozen struct for the same reason as AccessEvent: one per event on the hot path.)"""

    event: AccessEvent
    segment: str
    values: tuple[float, ...]
    keys: tuple = ()
    how: int = 0  # hour of the week and of the day of the event (see hour_slots)
    hod: int = 0
    peer: PeerGroup | None = None  # the peer group of the event's policies (learn updates it)
    network: str = ""  # see network_of
    concurrent: tuple[str, ...] = ()  # the networks of the last 15 minutes, when more than one
    alone: bool = True  # no other network in the last hour: learn makes this one familiar
    environment: str = ""  # of the secret a successful read names ("" for other calls)
    tkeys: tuple = ()  # ``keys`` tagged with their dimension (novelty.tagged): learn counts them
    place: str = ""  # ``network`` tagged

    def __getitem__(self, name: str) -> float:
        return self.values[INDEX[name]]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, self.values))


class Windows(msgspec.Struct, frozen=True, gc=False):
    """The window part of an event's features (what ``observe_windows`` measured)."""

    segment: str
    secret_access: bool
    requests_1m: float
    requests_1h: float
    requests_24h: float
    secrets_1h: float
    secrets_24h: float
    denied_5m: float
    denied_ratio_1h: float
    denied_distinct_1h: float
    login_failed_5m: float
    list_to_read_ratio_1h: float
    creds_10m: float
    since_list_burst: float
    since_policy_write: float
    since_denied_burst: float
    since_token_create: float
    since_previous: float  # event time since the identity's previous call (inf for its first)
    networks_15m: float
    network: str
    peer: PeerGroup
    concurrent: tuple[str, ...]
    alone: bool
    lineage: int = 0  # verdict bits of secretscope.lineage (index of _LINEAGE_VALUES)
    place: str = ""  # the network's key among the identity's counts (novelty.tagged)


def hour_slots(ts: float) -> tuple[int, int]:
    """(hour of week with Monday 00:00 UTC = 0, hour of day)."""
    hour = int(ts // 3600)
    hod = hour % 24
    # 1970-01-01 was a Thursday: day 0 has weekday 3.
    return ((hour // 24 + 3) % 7) * 24 + hod, hod


def is_secret_access(event: AccessEvent) -> bool:
    return event.operation != "help" and not event.path.startswith(_NON_SECRET_PREFIXES)


def is_policy_write(event: AccessEvent) -> bool:
    return event.operation in _WRITE_OPS and event.path.startswith(_POLICY_PREFIXES)


def _learned_keys(fv: FeatureVector, keys: tuple) -> tuple:
    """The dimension values ``learn`` counts (``keys`` are fv's, tagged or not): a secret (and
    its folder) only once it was used successfully, so denied probes and typos do not widen
    what the identity is known to use."""
    if fv.event.outcome == SUCCESS:
        return keys
    return (None, None) + keys[2:]


def _place(fv: FeatureVector) -> str | None:
    """The network ``learn`` counts for ``fv`` (tagged): one it called from alone."""
    if fv.alone and fv.network:
        return fv.place or tagged(PLACE, fv.network)
    return None


def _environment(fv: FeatureVector) -> str | None:
    """The environment ``learn`` counts for ``fv`` (tagged): of a secret it read."""
    return tagged(ENVIRONMENT, fv.environment) if fv.environment else None


_TKEYS: dict[tuple, tuple] = {}  # keys of an event -> tagged (calls repeat the same few)
_TKEYS_MAX = 4096  # it holds the strings of its keys: bounded by memory, not by hit rate


def _tagged(keys: tuple) -> tuple:
    tkeys = _TKEYS.get(keys)
    if tkeys is None:
        tkeys = tagged_keys(keys)
        if len(_TKEYS) >= _TKEYS_MAX:
            _TKEYS.clear()
        _TKEYS[keys] = tkeys
    return tkeys


def network_of(segment: str, address: str) -> str:
    """Where a call came from, coarsely: its segment, or for an address in no segment its /16
    (IPv4) or /32 (IPv6), so a VPN that hands out a new address per connection, or a home
    connection, is one network and a second place is another."""
    if segment != "unknown":
        return segment
    if ":" in address:
        return "unknown:" + ":".join(address.split(":", 2)[:2])
    return "unknown:" + ".".join(address.split(".", 2)[:2])


def _in_tree(folder: str, known) -> bool:
    """Whether ``folder`` is an ancestor or a descendant of a known folder (a production folder
    above the role's staging one, a new subfolder of its own), counting only relations whose
    shorter folder is below a mount's top level."""
    for k in known:
        short, long_ = (folder, k) if len(folder) < len(k) else (k, folder)
        if short.count("/") >= 1 and long_.startswith(short + "/"):
            return True
    return False


def _remember(kept: dict[str, list[float]], ts: float, secret: str) -> None:
    """Note a read at ``ts`` of a secret new for the whole role.

    Exact whatever the batching: a batch may derive a row twice, and rows later in a batch may
    be derived before an earlier one is derived again, so every read is kept (sorted times per
    secret, each time once) and counted by time, never cut by count alone. Bounded: times older
    than two days before the newest are dropped (a batch spans far less), at most
    ``ROLE_NEW_KEEP`` secrets and 256 times per secret are kept (beyond that a sweep is
    long past every threshold)."""
    times = kept.get(secret)
    if times is None:
        if len(kept) >= ROLE_NEW_KEEP:
            floor = ts - 2 * _DAY
            for old in [k for k, v in kept.items() if v[-1] < floor]:
                del kept[old]
            if len(kept) >= ROLE_NEW_KEEP:
                return
        kept[secret] = [ts]
        return
    i = bisect_left(times, ts)
    if i < len(times) and times[i] == ts:
        return
    times.insert(i, ts)
    if len(times) > 256 or times[0] < ts - 2 * _DAY:
        floor = ts - 2 * _DAY
        times[:] = [t for t in times if t >= floor][-256:]


def _role_new(kept: dict[str, list[float]], ts: float) -> tuple[float, float]:
    """Distinct role-new secrets read in the hour and the day up to ``ts``."""
    hour = day = 0
    for times in kept.values():
        i = bisect_right(times, ts)
        if i:
            last = times[i - 1]
            if last > ts - _DAY:
                day += 1
                if last > ts - 3600.0:
                    hour += 1
    return float(hour), float(day)


class FeatureExtractor:
    """Per-identity state and the feature functions; see the module docstring."""

    def __init__(self, segments: SegmentTable,
                 environments: Iterable[tuple[str, str]] = (), idle_days: float = 30.0) -> None:
        self.segments = segments
        self.idle_seconds = idle_days * _DAY
        # (name, compiled regex) in order; a path none matches is production
        self.environments = [(name, re.compile(paths)) for name, paths in environments]
        self._env_cache: dict[str, str] = {}
        self._where: dict[str, tuple[str, str, str]] = {}  # address -> see _locate
        # hour_slots, novelty.dimension_keys and their tagged keys in one compiled call
        self._keys = EventKeys(agent_family).keys
        self.identities: dict[str, IdentityState] = {}
        # identities idle longer than idle_days: a summary each (see identity.Dormant)
        self.dormant: dict[str, Dormant] = {}
        self.next_sweep = -math.inf  # event time of the next look for idle identities
        # identities observed and not derived since: a batch whose event time spans more than
        # idle_days must not expire an identity whose earlier row is still to be derived
        self._pending: set[str] = set()
        self.peers: dict[str, PeerGroup] = {}
        self._policies: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per policy set
        self.lineage = LineageTracker()
        # windows measured by a split replay's reader process, waiting for their events
        self.relayed: deque[Windows] = deque()
        # this extractor is that reader's: it measures windows for another process, which
        # keeps the recent events and peer groups (Windows.peer is None)
        self.windows_only = False

    @classmethod
    def for_settings(cls, settings) -> "FeatureExtractor":
        """The extractor of a pipeline configured by ``settings`` (segments, environments,
        idle expiry): the pipeline's and a split replay's reader are built by this one call."""
        segments = SegmentTable((s.name, s.cidr) for s in settings.segments)
        return cls(segments, ((e.name, e.paths) for e in settings.environments),
                   settings.state.idle_days)

    def environment_of(self, secret: str) -> str:
        env = self._env_cache.get(secret)
        if env is None:
            env = next((name for name, rx in self.environments if rx.search(secret)),
                       PRODUCTION)
            if len(self._env_cache) >= _ENV_CACHE_MAX:  # paths are attacker-controlled
                self._env_cache.clear()
            self._env_cache[secret] = env
        return env

    def _locate(self, address: str) -> tuple[str, str, str]:
        """(segment, network, network's key among the counts) of an address, cached: one
        string per network, not per call."""
        segment = self.segments.lookup(address)
        network = segment if segment != UNKNOWN else _intern(network_of(segment, address))
        if len(self._where) >= _ENV_CACHE_MAX:
            self._where.clear()
        where = self._where[address] = (segment, network, tagged(PLACE, network))
        return where

    def state(self, identity: str) -> IdentityState | None:
        return self.identities.get(identity)

    def _arrive(self, identity: str) -> IdentityState:
        summary = self.dormant.pop(identity, None)
        st = IdentityState() if summary is None else summary.revive(self.peer_group)
        self.identities[identity] = st
        return st

    def expire_idle(self, now: float) -> int:
        """Replace the state of identities idle (event time) for longer than ``idle_days``
        before ``now`` by a summary; return how many. Called by ``observe_windows`` once per
        hour of event time, so when it runs depends only on the events, not on batching."""
        self.next_sweep = now + _SWEEP
        floor = now - self.idle_seconds
        pending = self._pending
        idle = [k for k, st in self.identities.items()
                if st.newest_ts < floor and k not in pending]
        for k in idle:
            self.dormant[k] = Dormant.of(self.identities.pop(k))
        return len(idle)

    def peer_group(self, policies: tuple[str, ...]) -> PeerGroup:
        key = peer_key(policies)
        group = self.peers.get(key)
        if group is None:
            group = self.peers[key] = PeerGroup(key)
        return group

    def observe(self, event: AccessEvent) -> FeatureVector:
        """Update the windows with ``event`` and return its features against the baseline."""
        return self.derive(event, self.observe_windows(event))

    def observe_windows(self, event: AccessEvent) -> Windows:
        """Record ``event`` in its identity's windows; return the window part of its features.

        Windows do not depend on the baseline, so this is done once per event even when the
        pipeline has to derive the baseline features again (see ``Pipeline.process_batch``).
        """
        ts = event.ts
        st = self._enter(event)
        where = self._where.get(event.remote_address)
        if where is None:
            where = self._locate(event.remote_address)
        segment, network, place = where
        # every window at once, in compiled code (secretscope._native.IdentityWindows.observe)
        w = st.win.observe(ts, event.event_id, event.operation, event.outcome, event.path,
                           event.secret, event.is_login, network, not self.windows_only)
        secret_access = w[0]
        lineage = 0
        if event.path.startswith("auth/") or event.identity.startswith("approle:"):
            lineage = self.lineage.observe(
                event.identity, st.peer.key, event.path, event.operation, event.mount_type,
                event.outcome == SUCCESS, event.is_login, secret_access, event.remote_address,
                segment, ts)
        return Windows(segment, *w[:18], network, None if self.windows_only else st.peer,
                       w[18], w[19], lineage, place)

    def _enter(self, event: AccessEvent) -> IdentityState:
        """The part of observing an event both halves of a split replay do (see
        ``observe_relayed``): the hourly look for idle identities, the identity's state, its
        peer group, and its recent events."""
        ts = event.ts
        if ts >= self.next_sweep:
            self.expire_idle(ts)
        st = self.identities.get(event.identity)
        if st is None:
            st = self._arrive(event.identity)
        self._pending.add(event.identity)
        if event.policies != st.policies:
            # An identity that changes team gets new policies: from now on its peers are the
            # holders of those, so its new team's folders are its role's, not foreign.
            policies = self._policies.get(event.policies)
            if policies is None:
                if len(self._policies) >= _ENV_CACHE_MAX:
                    self._policies.clear()
                policies = self._policies[event.policies] = event.policies
            st.policies = policies
            st.peer = self.peer_group(policies)
        return st

    def observe_relayed(self, event: AccessEvent) -> Windows:
        """``observe_windows`` for an event whose windows another process measured
        (``secretscope.replay_split``): they are the next entry of ``relayed``, in event order.

        Only what the baseline side reads is kept here: the identity and its peer group, its
        recent, denied and failed-login events (the events a finding names) and its newest
        time. Expiry runs at the same event times as in one process, so both halves hold the
        same identities."""
        w = self.relayed.popleft()
        st = self._enter(event)
        st.win.relay(event.ts, event.event_id, event.outcome == DENIED,
                     event.is_login and event.outcome != SUCCESS)
        return msgspec.structs.replace(w, peer=st.peer)

    def derive(self, event: AccessEvent, w: Windows) -> FeatureVector:
        """The features of an event whose windows are ``w``, against the current baseline."""
        st = self.identities[event.identity]
        self._pending.discard(event.identity)
        peer = w.peer
        ts = event.ts
        segment = w.segment
        secret_access = w.secret_access
        how, hod, keys, tkeys = self._keys(event, segment, secret_access)
        # the identity's own baseline, in compiled code (secretscope._native.Baseline.derive)
        (how_share, hod_share, work_distance, classes, novelty, seg_share, periodicity,
         deviation, unfamiliar, production_new, secrets_known, folders_known, history,
         history_days, requests_baseline, secrets_baseline, policy_writer,
         new_segment_login) = st.base.derive(ts, how, hod, tkeys, w.place, _PRODUCTION)
        idle = w.since_previous / _DAY if history else 0.0
        # the peer group's side, in compiled code too (secretscope._native.PeerGroup.derive)
        peer_classes, peer_novelty, peer_hod_share, peer_folders, peer_members = peer.derive(
            keys, hod)
        p_history = peer.history
        reading = secret_access and event.outcome == SUCCESS and event.operation == "read"
        if reading and history and classes[SECRET] == UNSEEN and peer_classes[0] == UNSEEN:
            if st.role_new is None:
                st.role_new = {}
            _remember(st.role_new, ts, event.secret)
            if ts > st.role_new_newest:
                st.role_new_newest = ts
        environment = self.environment_of(event.secret) if reading else ""
        in_tree = 1.0 if peer_classes[1] == UNSEEN and keys[1] and _in_tree(
            keys[1], peer.values(1)) else 0.0  # PEER_DIMENSIONS[1] is FOLDER
        crossing = 1.0 if environment == PRODUCTION and production_new else 0.0
        if ts - _DAY < st.role_new_newest:  # most identities have none in the last day
            role_new_1h, role_new_24h = _role_new(st.role_new, ts)
        else:
            role_new_1h = role_new_24h = 0.0
        policy_write = not secret_access and is_policy_write(event)
        succeeded = event.outcome == SUCCESS and (secret_access or event.is_login)
        values = (
            w.requests_1m,
            w.requests_1h,
            w.requests_24h,
            w.secrets_1h,
            w.secrets_24h,
            w.secrets_1h / (secrets_baseline + 1.0),
            w.denied_5m,
            w.denied_ratio_1h,
            w.denied_distinct_1h,
            w.login_failed_5m,
            w.list_to_read_ratio_1h,
            w.creds_10m,
            how_share,
            hod_share,
            peer_hod_share,
            work_distance,
            seg_share,
            1.0 if classes[SEGMENT] == UNSEEN else 0.0,
            1.0 if classes[SECRET] == UNSEEN else 0.0,
            1.0 if classes[USER_AGENT] == UNSEEN else 0.0,
            1.0 if policy_write and not policy_writer else 0.0,
            1.0 if policy_write and not peer.policy_writes else 0.0,
            1.0 if policy_write and event.path.rpartition("/")[2] in event.policies else 0.0,
            1.0 if policy_writer or peer.policy_writes else 0.0,
            *classes,
            novelty,
            *peer_classes,
            peer_novelty,
            secrets_known,
            folders_known,
            peer_folders,
            1.0 if reading and w.since_list_burst <= _LIST_FOLLOW else 0.0,
            1.0 if reading and w.since_policy_write <= _CHANGE_FOLLOW else 0.0,
            1.0 if succeeded and w.since_denied_burst <= _DENIED_FOLLOW else 0.0,
            1.0 if reading and w.since_token_create <= _CHANGE_FOLLOW else 0.0,
            1.0 if reading and 0.0 <= ts - new_segment_login <= _CHANGE_FOLLOW else 0.0,
            w.networks_15m,
            1.0 if unfamiliar else 0.0,
            role_new_1h,
            role_new_24h,
            crossing,
            in_tree,
            *_LINEAGE_VALUES[w.lineage],
            requests_baseline,
            secrets_baseline,
            float(history),
            history_days,
            idle,
            periodicity,
            deviation,
            float(p_history),
            peer_members,
        )
        return FeatureVector(event, segment, values, keys, how, hod, peer, w.network, w.concurrent,
                             w.alone, environment, tkeys, w.place)

    def learn(self, fv: FeatureVector) -> Undo:
        """Fold an event that raised no finding into its identity's (and peers') baseline.

        Returns what ``unlearn`` needs to take it out again exactly: the pipeline learns
        optimistically before its detectors have scored a batch, and backs out the few events
        they then flag.
        """
        event = fv.event
        st = self.identities[event.identity]
        succeeded = event.outcome == SUCCESS
        policy_write = is_policy_write(event)
        # the identity's own baseline, in compiled code (secretscope._native.Baseline.learn);
        # a secret and its folder count once used successfully
        undo = Undo(fv.how, fv.hod, st.base.learn(
            event.ts, fv.how, fv.hod, fv.tkeys or _tagged(fv.keys), 0 if succeeded else 2,
            event.is_login and succeeded, _place(fv), _environment(fv), policy_write,
            fv.values[_REQUESTS_1H], fv.values[_SECRETS_1H]))
        (fv.peer or st.peer).learn(event.identity, fv.keys if succeeded else
                                   (None, None) + fv.keys[2:], fv.hod, policy_write)
        return undo

    def unlearn(self, fv: FeatureVector, undo: Undo) -> None:
        """Exactly reverse ``learn(fv)``; learns must be undone newest first."""
        event = fv.event
        st = self.identities[event.identity]
        st.base.unlearn(undo.how, undo.hod, _learned_keys(fv, fv.tkeys or _tagged(fv.keys)),
                        _place(fv), _environment(fv), undo.saved)
        (fv.peer or st.peer).unlearn(event.identity, _learned_keys(fv, fv.keys), undo.hod,
                                     is_policy_write(event))


def feature_frame(events: Iterable[AccessEvent], segments: SegmentTable,
                  extractor: FeatureExtractor | None = None,
                  environments: Iterable[tuple[str, str]] = ()) -> "pd.DataFrame":
    """Features of ``events`` as a DataFrame, computed by the pipeline's own code.

    Every event is learned after it is observed (no detector decides here); pass an extractor to
    continue from existing state.
    """
    import pandas as pd

    extractor = extractor or FeatureExtractor(segments, environments)
    rows, index = [], []
    for event in events:
        fv = extractor.observe(event)
        extractor.learn(fv)
        rows.append((event.time, event.identity, event.display_name, event.operation,
                     event.secret, event.outcome, fv.segment) + fv.values)
        index.append(event.event_id)
    columns = ["time", "identity", "display_name", "operation", "secret", "outcome",
               "segment", *FEATURE_NAMES]
    return pd.DataFrame(rows, columns=columns, index=pd.Index(index, name="event_id"))
