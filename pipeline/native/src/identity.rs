//! The windows of one identity: what it is doing now, updated by every event it makes
//! (`FeatureExtractor.observe_windows` in `secretscope/features.py` says what each one is for).

use crate::windows::{interned, items_of, pair, room, Counter, Distinct, Recent, RecentEvents,
                     Stamped};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyList, PyString, PyTuple};

const NEVER: f64 = -1e18; // the time of a mark that was never set
const RECENT: usize = 64; // (time, id) of the identity's last events kept for its findings
const DENIED_BURST: usize = 5; // denials or failed logins in 5 minutes
const LIST_BURST: usize = 3; // lists in 10 minutes
const CONCURRENT: f64 = 900.0; // networks used within this long of each other: one session
const ALONE: f64 = 3600.0; // see features._ALONE
pub const NON_SECRET_PREFIXES: [&str; 4] = ["sys/", "auth/", "identity/", "cubbyhole/"];
pub const POLICY_PREFIXES: [&str; 2] = ["sys/policy/", "sys/policies/acl/"];
// exported, so the tests can check them against features.py's
pub const CONSTANTS: [(&str, f64); 6] = [
    ("NEVER", NEVER), ("RECENT", RECENT as f64), ("DENIED_BURST", DENIED_BURST as f64),
    ("LIST_BURST", LIST_BURST as f64), ("CONCURRENT", CONCURRENT), ("ALONE", ALONE),
];

// (width in seconds, buckets) of the counters, (horizon, most entries) of the recent lists
const MINUTES: (f64, i64) = (60.0, 60);
const QUARTERS: (f64, i64) = (900.0, 96);
const REQUESTS_1M: (f64, usize) = (60.0, 100_000);
const BURSTS_5M: (f64, usize) = (300.0, 256);
const LISTS_10M: (f64, usize) = (600.0, 256);
const CREDS_10M: (f64, usize) = (600.0, 10_000);

/// Windows of denials, failed logins and dynamic credentials: most identities never fill
/// them, and they are allocated on the first event that needs one.
#[derive(Default)]
struct Rare {
    denied_1h: Counter,
    denied_5m: Recent<Stamped>,
    login_failed_5m: Recent<Stamped>,
    creds_10m: Recent<f64>,
    denied_secrets_1h: Distinct,
}

/// Windows of lists: many identities list now and then, few deny or fail, so these have a
/// box of their own rather than one with the rare windows.
#[derive(Default)]
struct Lists {
    lists_1h: Counter,
    lists_10m: Recent<f64>,
}

#[pyclass(module = "secretscope._native")]
pub struct IdentityWindows {
    requests_1m: Recent<f64>,
    requests_1h: Counter,
    requests_24h: Counter,
    reads_1h: Counter,
    secrets_1h: Distinct,
    secrets_24h: Distinct,
    rare: Option<Box<Rare>>,
    lists: Option<Box<Lists>>,
    // event time of the last list burst, policy write, denial burst, token creation (most
    // identities never set one)
    marks: Option<Box<[f64; 4]>>,
    recent: RecentEvents,
    newest_ts: f64,
    // network -> last event time from it, in the order first seen (see features._networks)
    networks: Vec<(Py<PyString>, f64)>,
}

fn starts_with_any(path: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| path.starts_with(p))
}

impl IdentityWindows {
    fn mark(&mut self, i: usize, ts: f64) {
        self.marks.get_or_insert_with(|| Box::new([NEVER; 4]))[i] = ts;
    }

    fn marks(&self) -> [f64; 4] {
        self.marks.as_deref().copied().unwrap_or([NEVER; 4])
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    fn lists(&mut self) -> &mut Lists {
        self.lists.get_or_insert_with(Default::default)
    }

    /// Record a call from `net` at `ts`; how many networks the identity used within
    /// `CONCURRENT` of it (this one included), or 0 when it used no other in `ALONE`.
    fn network(&mut self, net: Py<PyString>, ts: f64) -> usize {
        let seen = &mut self.networks;
        match seen.iter_mut().find(|(k, _)| k.as_ptr() == net.as_ptr()) {
            None => {
                room(seen);
                seen.push((net, ts))
            }
            Some(entry) => {
                if ts > entry.1 {
                    entry.1 = ts;
                }
            }
        }
        if seen.len() == 1 {
            return 0;
        }
        let floor = ts - ALONE;
        seen.retain(|(_, t)| *t >= floor); // a network stays only while it is recent
        if seen.len() == 1 {
            return 0;
        }
        let floor = ts - CONCURRENT;
        seen.iter().filter(|(_, t)| *t >= floor).count().max(1)
    }

    fn concurrent<'py>(&self, py: Python<'py>, ts: f64) -> PyResult<Bound<'py, PyTuple>> {
        let floor = ts - CONCURRENT;
        let mut names: Vec<&Bound<'py, PyString>> = Vec::new();
        for (k, t) in &self.networks {
            if *t >= floor {
                names.push(k.bind(py));
            }
        }
        // Python's own order of str (a handful of networks: any string, surrogates included)
        let mut failed = None;
        names.sort_by(|a, b| a.compare(*b).unwrap_or_else(|e| {
            failed = Some(e);
            std::cmp::Ordering::Equal
        }));
        if let Some(e) = failed {
            return Err(e);
        }
        PyTuple::new(py, names)
    }
}

#[pymethods]
impl IdentityWindows {
    #[new]
    fn new() -> Self {
        IdentityWindows {
            requests_1m: Recent::default(),
            requests_1h: Counter::default(),
            requests_24h: Counter::default(),
            reads_1h: Counter::default(),
            secrets_1h: Distinct::default(),
            secrets_24h: Distinct::default(),
            rare: None,
            lists: None,
            marks: None,
            recent: RecentEvents::default(),
            newest_ts: f64::NEG_INFINITY,
            networks: Vec::new(),
        }
    }

    /// Record one event in every window; return `(secret_access, requests_1m, requests_1h,
    /// requests_24h, secrets_1h, secrets_24h, denied_5m, denied_ratio_1h, denied_distinct_1h,
    /// login_failed_5m, list_to_read_ratio_1h, creds_10m, since_list_burst,
    /// since_policy_write, since_denied_burst, since_token_create, since_previous,
    /// networks_15m, concurrent, alone)`: ``features.Windows`` in its order, from its second
    /// field, without the network, peer, lineage and place the caller knows.
    #[allow(clippy::too_many_arguments)]
    fn observe<'py>(&mut self, py: Python<'py>, ts: f64, event_id: &Bound<'py, PyString>,
                    operation: &Bound<'py, PyString>, outcome: &Bound<'py, PyString>,
                    path: &Bound<'py, PyString>, secret: &Bound<'py, PyString>,
                    is_login: bool, network: &Bound<'py, PyString>, remember: bool)
                    -> PyResult<Bound<'py, PyTuple>> {
        // lossy only where a string is not UTF-8 (a lone surrogate): these are compared with
        // ASCII names and prefixes, which such a character can never be part of
        let (operation, outcome, path) =
            (operation.to_string_lossy(), outcome.to_string_lossy(), path.to_string_lossy());
        let (operation, outcome, path) = (operation.as_ref(), outcome.as_ref(), path.as_ref());
        if remember {
            self.recent.append(ts, event_id, RECENT)?;
        }
        let gap = ts - self.newest_ts;
        let since_previous = if gap > 0.0 { gap } else { 0.0 };
        if ts > self.newest_ts {
            self.newest_ts = ts;
        }
        let networks = self.network(interned(network), ts);
        let requests_1m = self.requests_1m.add_count(ts, event_id, REQUESTS_1M.0, REQUESTS_1M.1);
        let requests_1h = self.requests_1h.add_count(ts, MINUTES.0, MINUTES.1);
        let requests_24h = self.requests_24h.add_count(ts, QUARTERS.0, QUARTERS.1);
        let success = outcome == "success";
        let secret_access = operation != "help" && !starts_with_any(path, &NON_SECRET_PREFIXES);
        if outcome == "denied" {
            let rare = self.rare();
            rare.denied_1h.add(ts, MINUTES.0, MINUTES.1);
            if secret_access {
                rare.denied_secrets_1h.add(secret, ts, 3600.0);
            }
            if rare.denied_5m.add_count(ts, event_id, BURSTS_5M.0, BURSTS_5M.1)
                >= DENIED_BURST
            {
                self.mark(2, ts);
            }
        }
        if is_login && !success {
            let rare = self.rare();
            if rare.login_failed_5m.add_count(ts, event_id, BURSTS_5M.0, BURSTS_5M.1)
                >= DENIED_BURST
            {
                self.mark(2, ts);
            }
        }
        if operation == "list" {
            let lists = self.lists();
            lists.lists_1h.add(ts, MINUTES.0, MINUTES.1);
            if lists.lists_10m.add_count(ts, event_id, LISTS_10M.0, LISTS_10M.1) >= LIST_BURST {
                self.mark(0, ts);
            }
        }
        if operation == "read" && success {
            self.reads_1h.add(ts, MINUTES.0, MINUTES.1);
        }
        let (distinct_1h, distinct_24h);
        if secret_access {
            distinct_1h = self.secrets_1h.add(secret, ts, 3600.0);
            distinct_24h = self.secrets_24h.add(secret, ts, 86400.0);
            if path.contains("/creds/") || path.contains("/issue/") {
                self.rare().creds_10m.add(ts, event_id, CREDS_10M.1);
            }
        } else {
            distinct_1h = self.secrets_1h.count(ts, 3600.0);
            distinct_24h = self.secrets_24h.count(ts, 86400.0);
            if success {
                if matches!(operation, "create" | "update" | "delete")
                    && starts_with_any(path, &POLICY_PREFIXES)
                {
                    self.mark(1, ts);
                } else if path.starts_with("auth/token/create") {
                    self.mark(3, ts);
                }
            }
        }
        // the counts are only taken (and their windows moved) where Python takes them; an
        // unallocated window is an empty one, whose count is 0
        let (denied_5m, denied_ratio, denied_distinct, failed_5m, creds) =
            match self.rare.as_mut() {
                None => (0, 0.0, 0, 0, 0),
                Some(rare) => {
                    let denied_5m = rare.denied_5m.count(ts, BURSTS_5M.0);
                    let denied_ratio = if requests_1h != 0 {
                        rare.denied_1h.count(ts, MINUTES.0, MINUTES.1) as f64 / requests_1h as f64
                    } else {
                        0.0
                    };
                    let denied_distinct = rare.denied_secrets_1h.count(ts, 3600.0);
                    let failed_5m = rare.login_failed_5m.count(ts, BURSTS_5M.0);
                    let creds = rare.creds_10m.count(ts, CREDS_10M.0);
                    (denied_5m, denied_ratio, denied_distinct, failed_5m, creds)
                }
            };
        let list_ratio = match self.lists.as_mut() {
            None => 0.0,
            Some(lists) => {
                let lists = lists.lists_1h.count(ts, MINUTES.0, MINUTES.1);
                if lists != 0 {
                    let reads = self.reads_1h.count(ts, MINUTES.0, MINUTES.1).max(1);
                    lists as f64 / reads as f64
                } else {
                    0.0
                }
            }
        };
        let concurrent = if networks > 1 { self.concurrent(py, ts)? } else { PyTuple::empty(py) };
        let m = self.marks();
        let floats = [
            requests_1m as f64,
            requests_1h as f64,
            requests_24h as f64,
            distinct_1h as f64,
            distinct_24h as f64,
            denied_5m as f64,
            denied_ratio,
            denied_distinct as f64,
            failed_5m as f64,
            list_ratio,
            creds as f64,
            ts - m[0],
            ts - m[1],
            ts - m[2],
            ts - m[3],
            since_previous,
            networks.max(1) as f64,
        ];
        let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(20);
        items.push(pyo3::types::PyBool::new(py, secret_access).to_owned().into_any());
        for f in floats {
            items.push(PyFloat::new(py, f).into_any());
        }
        items.push(concurrent.into_any());
        items.push(pyo3::types::PyBool::new(py, networks == 0).to_owned().into_any());
        PyTuple::new(py, items)
    }

    /// The part of `observe` the baseline side of a split replay keeps for an event whose
    /// windows the reader process measured: recent events, denials, failed logins, newest time.
    fn relay(&mut self, ts: f64, event_id: &Bound<'_, PyString>, denied: bool,
             failed_login: bool) -> PyResult<()> {
        self.recent.append(ts, event_id, RECENT)?;
        if ts > self.newest_ts {
            self.newest_ts = ts;
        }
        if denied {
            self.rare().denied_5m.add_count(ts, event_id, BURSTS_5M.0, BURSTS_5M.1);
        }
        if failed_login {
            self.rare().login_failed_5m.add_count(ts, event_id, BURSTS_5M.0, BURSTS_5M.1);
        }
        Ok(())
    }

    /// Newest event time observed (-inf before the first).
    #[getter]
    fn newest_ts(&self) -> f64 {
        self.newest_ts
    }

    #[setter]
    fn set_newest_ts(&mut self, ts: f64) {
        self.newest_ts = ts;
    }

    /// How many of the last events are kept (at most 64).
    fn recent_len(&self) -> usize {
        self.recent.len(RECENT)
    }

    /// The identity's last events as (time, event id), oldest first: `take` of them after
    /// the first `skip`.
    #[pyo3(signature = (skip=0, take=RECENT))]
    fn recent_items(&self, py: Python<'_>, skip: usize, take: usize)
                    -> Vec<(f64, Py<PyString>)> {
        self.recent.items(py, RECENT, skip, take)
    }

    /// (time, event id) of the denials of the last 5 minutes, oldest first.
    fn denied_items(&self, py: Python<'_>) -> Vec<(f64, Py<PyString>)> {
        self.rare.as_ref().map_or_else(Vec::new, |r| r.denied_5m.items(py))
    }

    /// (time, event id) of the failed logins of the last 5 minutes, oldest first.
    fn failed_items(&self, py: Python<'_>) -> Vec<(f64, Py<PyString>)> {
        self.rare.as_ref().map_or_else(Vec::new, |r| r.login_failed_5m.items(py))
    }

    /// Record a call from `net` at `ts` and return what `features._networks` returns (for
    /// the tests; `observe` does this).
    fn _network(&mut self, net: &Bound<'_, PyString>, ts: f64) -> usize {
        self.network(interned(net), ts)
    }

    /// The recent networks and their last times, in the order first seen.
    fn networks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, t) in &self.networks {
            d.set_item(k.bind(py), *t)?;
        }
        Ok(d)
    }

    /// Plain lists and numbers, as `IdentityState.to_state` kept them: `(recents, recent,
    /// counters, distincts, marks, newest_ts, networks)`.
    fn to_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (empty_rare, empty_lists) = (Rare::default(), Lists::default());
        let rare = self.rare.as_deref().unwrap_or(&empty_rare);
        let lists = self.lists.as_deref().unwrap_or(&empty_lists);
        let recents = PyList::new(py, [
            self.requests_1m.to_state(py),
            rare.denied_5m.to_state(py),
            rare.login_failed_5m.to_state(py),
            lists.lists_10m.to_state(py),
            rare.creds_10m.to_state(py),
        ])?;
        let recent = PyList::new(py, self.recent.items(py, RECENT, 0, RECENT).into_iter()
            .map(|(t, id)| PyList::new(py, [PyFloat::new(py, t).into_any(),
                                            id.into_bound(py).into_any()]).unwrap()))?;
        let counters = PyList::new(py, [
            self.requests_1h.to_state(py),
            self.requests_24h.to_state(py),
            rare.denied_1h.to_state(py),
            lists.lists_1h.to_state(py),
            self.reads_1h.to_state(py),
        ])?;
        let distincts = PyList::new(py, [
            self.secrets_1h.items(py),
            self.secrets_24h.items(py),
            rare.denied_secrets_1h.items(py),
        ])?;
        PyTuple::new(py, [
            recents.into_any(),
            recent.into_any(),
            counters.into_any(),
            distincts.into_any(),
            PyList::new(py, self.marks())?.into_any(),
            PyFloat::new(py, self.newest_ts).into_any(),
            self.networks(py)?.into_any(),
        ])
    }

    /// The windows of a `to_state`.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn from_state(recents: &Bound<'_, PyAny>, recent: &Bound<'_, PyAny>,
                  counters: &Bound<'_, PyAny>, distincts: &Bound<'_, PyAny>,
                  marks: [f64; 4], newest_ts: f64, networks: &Bound<'_, PyDict>)
                  -> PyResult<Self> {
        let mut w = IdentityWindows::new();
        let recents = items_of(recents)?;
        let counters = items_of(counters)?;
        let distincts = items_of(distincts)?;
        if recents.len() != 5 || counters.len() != 5 || distincts.len() != 3 {
            return Err(PyValueError::new_err("identity windows of an unknown shape"));
        }
        // as before: a window is loaded only when it holds something
        let times = |s: &Bound<'_, PyAny>| -> PyResult<bool> {
            Ok(s.get_item(0)?.len()? > 0)
        };
        if times(&recents[0])? {
            w.requests_1m.load_state(&recents[0])?;
        }
        if times(&recents[1])? {
            w.rare().denied_5m.load_state(&recents[1])?;
        }
        if times(&recents[2])? {
            w.rare().login_failed_5m.load_state(&recents[2])?;
        }
        if times(&recents[3])? {
            w.lists().lists_10m.load_state(&recents[3])?;
        }
        if times(&recents[4])? {
            w.rare().creds_10m.load_state(&recents[4])?;
        }
        for entry in items_of(recent)? {
            let (t, id): (f64, Bound<'_, PyString>) = pair(&entry)?;
            w.recent.append(t, &id, RECENT)?;
        }
        for (i, saved) in counters.iter().enumerate() {
            let newest: i64 = saved.get_item(2)?.extract()?;
            if newest >= 0 {
                let target = match i {
                    0 => &mut w.requests_1h,
                    1 => &mut w.requests_24h,
                    2 => &mut w.rare().denied_1h,
                    3 => &mut w.lists().lists_1h,
                    _ => &mut w.reads_1h,
                };
                target.load_state(saved)?;
            }
        }
        for (i, items) in distincts.iter().enumerate() {
            if items.len()? > 0 {
                let target = match i {
                    0 => &mut w.secrets_1h,
                    1 => &mut w.secrets_24h,
                    _ => &mut w.rare().denied_secrets_1h,
                };
                target.load(items)?;
            }
        }
        if marks != [NEVER; 4] {
            w.marks = Some(Box::new(marks));
        }
        w.newest_ts = newest_ts;
        for (k, t) in networks.iter() {
            let k = k.downcast_into::<PyString>()?;
            w.networks.push((interned(&k), t.extract()?));
        }
        Ok(w)
    }
}
