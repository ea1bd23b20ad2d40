//! The baseline of one identity: what is normal for it, changed only by the events it learns
//! (`FeatureExtractor.learn`, put back by `unlearn`). The per-identity half of `derive` and
//! `learn` in `secretscope/features.py`: its hour profiles, how often it used each value of
//! every novelty dimension, its usual rates and gaps. The Python code it replaces is the
//! reference of `tests/test_native_baseline.py`.

use crate::windows::{floor_div, items_of, room, trim};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use std::collections::HashMap;

const HOD: usize = 168; // where the hours of the day start in the profile
const HOURS: usize = HOD + 24;
const COUNTED: usize = 10; // novelty.COUNTED: 8 dimensions, networks, environments
const SEGMENT: usize = 3; // novelty.SEGMENT
const PLACE: usize = 8;
const ENVIRONMENT: usize = 9;
const SECRET: usize = 0;
const FOLDER: usize = 1;
// novelty's frequency classes and their shares of the history (the peer group's too)
pub(crate) const FREQUENT: u8 = 0;
pub(crate) const INFREQUENT: u8 = 1;
pub(crate) const RARE: u8 = 2;
pub(crate) const UNSEEN: u8 = 3;
pub(crate) const RARE_SHARE: f64 = 0.01;
pub(crate) const INFREQUENT_SHARE: f64 = 0.10;
const WORKING_SHARE: f64 = 0.03;
const EWMA_ALPHA: f64 = 0.1;
const GAP_ALPHA: f64 = 0.05;
const NEVER: f64 = -1e18;
const DAY: f64 = 86400.0;
// Values found by a scan of their hashes up to this many (most identities use a few dozen);
// an index beyond
const SMALL: usize = 64;
// Hours a sparse profile holds before it is made dense: 64 bytes of pairs against 192 counts,
// and few enough for derive's lookups to scan
const SPARSE: usize = 32;

/// Events per hour of the week (0-167), then per hour of the day (168-191): while few hours hold
/// any and none more than 255, as (hour, count) pairs of those hours (an identity seen a few
/// times holds 20 pairs, not 192 counts); then in the narrowest unsigned type the counts fit,
/// widened when one would overflow.
enum Profile {
    Sparse(Vec<(u8, u8)>),
    U8(Box<[u8; HOURS]>),
    U16(Box<[u16; HOURS]>),
    U32(Box<[u32; HOURS]>),
    U64(Box<[u64; HOURS]>),
}

impl Profile {
    fn get(&self, i: usize) -> u64 {
        match self {
            Profile::Sparse(v) => v.iter().find(|e| e.0 as usize == i).map_or(0, |e| e.1 as u64),
            Profile::U8(h) => h[i] as u64,
            Profile::U16(h) => h[i] as u64,
            Profile::U32(h) => h[i] as u64,
            Profile::U64(h) => h[i],
        }
    }

    fn top(&self) -> u64 {
        match self {
            Profile::Sparse(_) | Profile::U8(_) => u8::MAX as u64,
            Profile::U16(_) => u16::MAX as u64,
            Profile::U32(_) => u32::MAX as u64,
            Profile::U64(_) => u64::MAX,
        }
    }

    fn of(values: &[u64]) -> Profile {
        let top = values.iter().copied().max().unwrap_or(0);
        let used = values.iter().filter(|v| **v != 0).count();
        if top <= u8::MAX as u64 && used <= SPARSE {
            Profile::Sparse(values.iter().enumerate().filter(|(_, v)| **v != 0)
                .map(|(i, v)| (i as u8, *v as u8)).collect())
        } else if top <= u8::MAX as u64 {
            let mut h = Box::new([0u8; HOURS]);
            for (i, v) in values.iter().enumerate() { h[i] = *v as u8; }
            Profile::U8(h)
        } else if top <= u16::MAX as u64 {
            let mut h = Box::new([0u16; HOURS]);
            for (i, v) in values.iter().enumerate() { h[i] = *v as u16; }
            Profile::U16(h)
        } else if top <= u32::MAX as u64 {
            let mut h = Box::new([0u32; HOURS]);
            for (i, v) in values.iter().enumerate() { h[i] = *v as u32; }
            Profile::U32(h)
        } else {
            let mut h = Box::new([0u64; HOURS]);
            h.copy_from_slice(values);
            Profile::U64(h)
        }
    }

    fn values(&self) -> Vec<u64> {
        (0..HOURS).map(|i| self.get(i)).collect()
    }

    /// Add `step` (+1 or -1) to an hour of the week and its hour of the day.
    fn count(&mut self, how: usize, hod: usize, step: i64) {
        let day = HOD + hod;
        if let Profile::Sparse(v) = self {
            let (a, b) = (how as u8, day as u8);
            if step < 0 {
                for hour in [a, b] {
                    if let Some(k) = v.iter().position(|e| e.0 == hour) {
                        v[k].1 -= 1;
                        if v[k].1 == 0 {
                            v.remove(k);
                            trim(v);
                        }
                    }
                }
                return;
            }
            let found = [a, b].map(|hour| v.iter().position(|e| e.0 == hour));
            let new = found.iter().filter(|i| i.is_none()).count();
            let full = found.iter().flatten().any(|&i| v[i].1 == u8::MAX);
            if v.len() + new <= SPARSE && !full {
                for (hour, at) in [a, b].into_iter().zip(found) {
                    match at {
                        Some(i) => v[i].1 += 1,
                        None => {
                            room(v);
                            v.push((hour, 1));
                        }
                    }
                }
                return;
            }
            let mut h = Box::new([0u8; HOURS]);
            for (i, n) in v.iter() { h[*i as usize] = *n; }
            *self = Profile::U8(h);
        }
        if step > 0 && (self.get(how) == self.top() || self.get(day) == self.top()) {
            *self = match self {
                Profile::Sparse(_) => unreachable!("a sparse profile is made dense above"),
                Profile::U8(_) => {
                    let mut h = Box::new([0u16; HOURS]);
                    for i in 0..HOURS { h[i] = self.get(i) as u16; }
                    Profile::U16(h)
                }
                Profile::U16(_) => {
                    let mut h = Box::new([0u32; HOURS]);
                    for i in 0..HOURS { h[i] = self.get(i) as u32; }
                    Profile::U32(h)
                }
                _ => {
                    let mut h = Box::new([0u64; HOURS]);
                    for i in 0..HOURS { h[i] = self.get(i); }
                    Profile::U64(h)
                }
            };
        }
        macro_rules! step {
            ($h:expr) => {{
                if step > 0 {
                    $h[how] += 1;
                    $h[HOD + hod] += 1;
                } else {
                    $h[how] -= 1;
                    $h[HOD + hod] -= 1;
                }
            }};
        }
        match self {
            Profile::Sparse(_) => unreachable!("a sparse profile is counted above"),
            Profile::U8(h) => step!(h),
            Profile::U16(h) => step!(h),
            Profile::U32(h) => step!(h),
            Profile::U64(h) => step!(h),
        }
    }
}

/// Two strings with their hashes: equal when the same object or equal text.
fn same_str(a: &Py<PyString>, a_hash: u32, b: &Py<PyString>, b_hash: u32) -> bool {
    a_hash == b_hash
        && (a.as_ptr() == b.as_ptr()
            // both str: compared in C, under the GIL every caller holds
            || unsafe { ffi::PyUnicode_Compare(a.as_ptr(), b.as_ptr()) == 0 })
}

/// A tagged key (`novelty.tagged`) with (the low half of) its cached Python hash: equal when
/// the same object or equal strings, so keys need not be interned.
pub(crate) struct Key {
    pub(crate) s: Py<PyString>,
    pub(crate) hash: u32,
}

impl Key {
    pub(crate) fn new(s: &Bound<'_, PyString>) -> PyResult<Key> {
        Ok(Key { hash: s.hash()? as u32, s: s.clone().unbind() })
    }

    pub(crate) fn same(&self, other: &Key) -> bool {
        same_str(&self.s, self.hash, &other.s, other.hash)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.same(other)
    }
}
impl Eq for Key {}
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

/// A count of [`Counts`]: 32 bits for one identity's values (16-byte entries), 64 for a peer
/// group's, whose members together can use one value more than 2**32 times.
pub(crate) trait Count: Copy + PartialEq + std::ops::AddAssign + std::ops::SubAssign {
    const ZERO: Self;
    const ONE: Self;
}

impl Count for u32 {
    const ZERO: Self = 0;
    const ONE: Self = 1;
}

impl Count for u64 {
    const ZERO: Self = 0;
    const ONE: Self = 1;
}

/// Learned events per value, in the order values were first counted (a value counted down to
/// nothing leaves, and comes back at the end), as the Python dict it replaces kept them:
/// explanations list values in that order where counts tie. Found by a scan while few, by an
/// index beyond `SMALL`.
pub(crate) struct Counts<N: Count = u32> {
    entries: Vec<Entry<N>>, // count 0: left (skipped, cut out when they pile up)
    index: Option<Box<HashMap<Key, u32>>>,
    live: u32,
}

impl<N: Count> Default for Counts<N> {
    fn default() -> Self {
        Counts { entries: Vec::new(), index: None, live: 0 }
    }
}

/// A value and its count (16 bytes with a 32-bit count).
pub(crate) struct Entry<N> {
    pub(crate) s: Py<PyString>,
    hash: u32,
    pub(crate) n: N,
}

impl<N> Entry<N> {
    fn key(&self, py: Python<'_>) -> Key {
        Key { s: self.s.clone_ref(py), hash: self.hash }
    }

    fn same(&self, key: &Key) -> bool {
        same_str(&self.s, self.hash, &key.s, key.hash)
    }
}

impl<N: Count> Counts<N> {
    fn find(&self, key: &Key) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).map(|&i| i as usize),
            None => self.entries.iter().position(|e| e.n != N::ZERO && e.same(key)),
        }
    }

    pub(crate) fn get(&self, key: &Key) -> N {
        self.find(key).map_or(N::ZERO, |i| self.entries[i].n)
    }

    /// How many values are counted.
    pub(crate) fn len(&self) -> usize {
        self.live as usize
    }

    /// Count one more; true if the value is new.
    pub(crate) fn count(&mut self, py: Python<'_>, key: Key) -> bool {
        if let Some(i) = self.find(&key) {
            self.entries[i].n += N::ONE;
            return false;
        }
        if let Some(index) = self.index.as_mut() {
            index.insert(Key { s: key.s.clone_ref(py), hash: key.hash },
                         self.entries.len() as u32);
        }
        room(&mut self.entries);
        self.entries.push(Entry { s: key.s, hash: key.hash, n: N::ONE });
        self.live += 1;
        if self.index.is_none() && self.entries.len() > SMALL {
            self.reindex(py);
        }
        true
    }

    /// Count one less; true if the value left.
    pub(crate) fn uncount(&mut self, py: Python<'_>, key: &Key) -> PyResult<bool> {
        let i = self.find(key).ok_or_else(|| PyKeyError::new_err(key.s.clone_ref(py)))?;
        self.entries[i].n -= N::ONE;
        if self.entries[i].n != N::ZERO {
            return Ok(false);
        }
        self.live -= 1;
        if let Some(index) = self.index.as_mut() {
            index.remove(key);
        }
        if self.entries.len() > 2 * self.live as usize + 8 {
            self.entries.retain(|e| e.n != N::ZERO);
            trim(&mut self.entries);
            if self.index.is_some() {
                self.reindex(py);
            }
        }
        Ok(true)
    }

    fn reindex(&mut self, py: Python<'_>) {
        let mut index = HashMap::with_capacity(self.live as usize);
        for (i, e) in self.entries.iter().enumerate() {
            if e.n != N::ZERO {
                index.insert(e.key(py), i as u32);
            }
        }
        self.index = Some(Box::new(index));
    }

    /// Counts of a snapshot's dict, whose keys are distinct (counts of 0 are left out).
    pub(crate) fn load(py: Python<'_>, saved: &Bound<'_, PyDict>) -> PyResult<Self>
    where
        N: for<'a> FromPyObject<'a>,
    {
        let mut c = Counts::default();
        for (k, n) in saved.iter() {
            let key = Key::new(k.downcast::<PyString>()?)?;
            let n: N = n.extract()?;
            if n == N::ZERO {
                continue;
            }
            room(&mut c.entries);
            c.entries.push(Entry { s: key.s, hash: key.hash, n });
            c.live += 1;
        }
        if c.entries.len() > SMALL {
            c.reindex(py);
        }
        Ok(c)
    }

    pub(crate) fn items(&self) -> impl Iterator<Item = &Entry<N>> {
        self.entries.iter().filter(|e| e.n != N::ZERO)
    }
}

/// The first key of a (dimension, value) pair, or None.
pub(crate) fn key_of(obj: &Bound<'_, PyAny>) -> PyResult<Option<Key>> {
    if obj.is_none() {
        return Ok(None);
    }
    Ok(Some(Key::new(obj.downcast::<PyString>()?)?))
}

const DIMENSIONS: usize = 8; // novelty.DIMENSIONS: the keys of an event, one per dimension

fn keys_of(tkeys: &Bound<'_, PyTuple>) -> PyResult<Vec<Option<Key>>> {
    if tkeys.len() > DIMENSIONS {
        return Err(PyValueError::new_err("more keys than novelty dimensions"));
    }
    tkeys.iter().map(|k| key_of(&k)).collect()
}

#[pyclass(module = "secretscope._native")]
pub struct Baseline {
    history: i64,
    profile: Profile,
    seen: Counts,
    distinct: [u32; COUNTED],
    policy_writer: bool,
    first_seen: f64,
    last_seen: f64,
    gap_mean: f64, // EWMA of log1p(seconds between learned events)
    gap_var: f64,
    new_segment_login: f64, // time of the last learned login from a new segment
    // the usual rates move once per hour of event time, from the hour's learned events
    baseline_hour: i64,
    hour_n: i64,
    hour_requests: f64,
    hour_secrets: f64,
    hours_seen: i64,
    requests_baseline: f64,
    secrets_baseline: f64,
}

impl Baseline {
    fn scalars(&self) -> (bool, f64, f64, f64, f64, f64) {
        (self.policy_writer, self.first_seen, self.last_seen, self.gap_mean, self.gap_var,
         self.new_segment_login)
    }

    fn rates(&self) -> (i64, i64, f64, f64, i64, f64, f64) {
        (self.baseline_hour, self.hour_n, self.hour_requests, self.hour_secrets, self.hours_seen,
         self.requests_baseline, self.secrets_baseline)
    }

    fn set_scalars(&mut self, s: (bool, f64, f64, f64, f64, f64)) {
        (self.policy_writer, self.first_seen, self.last_seen, self.gap_mean, self.gap_var,
         self.new_segment_login) = s;
    }

    fn set_rates(&mut self, r: (i64, i64, f64, f64, i64, f64, f64)) {
        (self.baseline_hour, self.hour_n, self.hour_requests, self.hour_secrets, self.hours_seen,
         self.requests_baseline, self.secrets_baseline) = r;
    }

    fn count(&mut self, py: Python<'_>, d: usize, key: Key) {
        if self.seen.count(py, key) {
            self.distinct[d] += 1;
        }
    }

    fn uncount(&mut self, py: Python<'_>, d: usize, key: &Key) -> PyResult<()> {
        if self.seen.uncount(py, key)? {
            self.distinct[d] -= 1;
        }
        Ok(())
    }

    /// identity.learn_rates: the usual hourly request count and breadth, one event further.
    fn learn_rates(&mut self, ts: f64, requests_1h: f64, secrets_1h: f64) {
        let hour = floor_div(ts, 3600.0);
        if hour > self.baseline_hour {
            if self.hour_n != 0 {
                self.hours_seen += 1;
                let inverse = 1.0 / self.hours_seen as f64;
                let alpha = if inverse > EWMA_ALPHA { inverse } else { EWMA_ALPHA };
                self.requests_baseline +=
                    alpha * (self.hour_requests / self.hour_n as f64 - self.requests_baseline);
                self.secrets_baseline +=
                    alpha * (self.hour_secrets / self.hour_n as f64 - self.secrets_baseline);
            }
            self.baseline_hour = hour;
            self.hour_n = 0;
            self.hour_requests = 0.0;
            self.hour_secrets = 0.0;
        }
        self.hour_n += 1;
        self.hour_requests += requests_1h;
        self.hour_secrets += secrets_1h;
        if self.hours_seen == 0 {
            self.requests_baseline = self.hour_requests / self.hour_n as f64;
            self.secrets_baseline = self.hour_secrets / self.hour_n as f64;
        }
    }

    /// features._hours_to: circular distance from `hour` to the nearest hour of the day
    /// holding at least `floor` events.
    fn hours_to(&self, hour: usize, floor: f64) -> f64 {
        for d in 0..13usize {
            let up = (hour + d) % 24;
            let down = (hour + 24 - d) % 24; // Python's negative index wraps the same way
            if self.profile.get(HOD + up) as f64 >= floor || self.profile.get(HOD + down) as f64 >= floor {
                return d as f64;
            }
        }
        12.0
    }
}

/// CPython's `x ** 0.5` is C's pow(): kept opaque so the compiler cannot turn it into sqrt.
fn pow_half(x: f64) -> f64 {
    x.powf(std::hint::black_box(0.5))
}

#[pymethods]
impl Baseline {
    #[new]
    fn new() -> Self {
        Baseline {
            history: 0,
            profile: Profile::Sparse(Vec::new()),
            seen: Counts::default(),
            distinct: [0; COUNTED],
            policy_writer: false,
            first_seen: 0.0,
            last_seen: 0.0,
            gap_mean: 0.0,
            gap_var: 0.0,
            new_segment_login: NEVER,
            baseline_hour: -1,
            hour_n: 0,
            hour_requests: 0.0,
            hour_secrets: 0.0,
            hours_seen: 0,
            requests_baseline: 0.0,
            secrets_baseline: 0.0,
        }
    }

    /// The identity's half of `FeatureExtractor.derive` for an event at `ts` in hour of the
    /// week `how` and of the day `hod` whose tagged keys are `tkeys`, from network `place`
    /// (tagged): `(how_share, hod_share, work_distance, classes, novelty, seg_share,
    /// periodicity, deviation, place_unfamiliar, production_new, secrets_known, folders_known,
    /// history, history_days, requests_baseline, secrets_baseline, policy_writer,
    /// new_segment_login)`; `production` is the tagged production environment.
    #[allow(clippy::too_many_arguments)]
    fn derive<'py>(&self, py: Python<'py>, ts: f64, how: usize, hod: usize,
                   tkeys: &Bound<'py, PyTuple>, place: &Bound<'py, PyString>,
                   production: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyTuple>> {
        if how >= HOD || hod >= 24 {
            return Err(PyValueError::new_err("hour out of range"));
        }
        let keys = keys_of(tkeys)?;
        let history = self.history;
        let total = history as f64;
        let mut classes: Vec<u8> = Vec::with_capacity(keys.len());
        let mut novelty = 0.0f64;
        let (mut how_share, mut hod_share, mut work_distance) = (0.0, 0.0, 0.0);
        let (mut seg_share, mut periodicity, mut deviation) = (0.0, 0.0, 0.0);
        if history != 0 {
            let h = &self.profile;
            let how_sum = h.get(if how != 0 { how - 1 } else { 167 }) + h.get(how)
                + h.get((how + 1) % 168);
            how_share = how_sum as f64 / total;
            let day = HOD + hod;
            let hod_sum = h.get(if hod != 0 { day - 1 } else { HOD + 23 }) + h.get(day)
                + h.get(HOD + (hod + 1) % 24);
            hod_share = hod_sum as f64 / total;
            let floor_share = WORKING_SHARE * total;
            let floor = if floor_share > 1.0 { floor_share } else { 1.0 };
            work_distance = if h.get(day) as f64 >= floor { 0.0 } else { self.hours_to(hod, floor) };
            let (rare, infrequent) = (RARE_SHARE * total, INFREQUENT_SHARE * total);
            for (d, key) in keys.iter().enumerate() {
                let n = match key {
                    Some(k) => self.seen.get(k) as i64,
                    None => history,
                };
                let nf = n as f64;
                if nf >= infrequent {
                    classes.push(FREQUENT);
                } else if n != 0 {
                    classes.push(if nf >= rare { INFREQUENT } else { RARE });
                } else {
                    classes.push(UNSEEN);
                    let surprise = 1.0 - self.distinct[d] as f64 / total;
                    if surprise > novelty {
                        novelty = surprise;
                    }
                }
            }
            if classes.get(SEGMENT).is_some_and(|c| *c < UNSEEN) {
                let n = match &keys[SEGMENT] {
                    Some(k) => self.seen.get(k),
                    None => return Err(PyKeyError::new_err("no segment")),
                };
                seg_share = n as f64 / total;
            }
            let gap_std = pow_half(self.gap_var);
            if history >= 10 {
                periodicity = 1.0 / (1.0 + gap_std);
                let since = ts - self.last_seen;
                let since = if since > 0.0 { since } else { 0.0 };
                deviation = (since.ln_1p() - self.gap_mean).abs() / (gap_std + 0.5);
            }
        } else {
            for k in &keys {
                classes.push(if k.is_none() { FREQUENT } else { UNSEEN });
            }
            novelty = 1.0;
        }
        let unfamiliar = history != 0 && self.seen.get(&Key::new(place)?) == 0;
        let production_new = self.distinct[ENVIRONMENT] != 0
            && self.seen.get(&Key::new(production)?) == 0;
        let history_days = if history != 0 { (ts - self.first_seen) / DAY } else { 0.0 };
        let items: [Bound<'py, PyAny>; 18] = [
            how_share.into_pyobject(py)?.into_any(),
            hod_share.into_pyobject(py)?.into_any(),
            work_distance.into_pyobject(py)?.into_any(),
            PyList::new(py, classes)?.into_any(),
            novelty.into_pyobject(py)?.into_any(),
            seg_share.into_pyobject(py)?.into_any(),
            periodicity.into_pyobject(py)?.into_any(),
            deviation.into_pyobject(py)?.into_any(),
            unfamiliar.into_pyobject(py)?.to_owned().into_any(),
            production_new.into_pyobject(py)?.to_owned().into_any(),
            (self.distinct[SECRET] as f64).into_pyobject(py)?.into_any(),
            (self.distinct[FOLDER] as f64).into_pyobject(py)?.into_any(),
            history.into_pyobject(py)?.into_any(),
            history_days.into_pyobject(py)?.into_any(),
            self.requests_baseline.into_pyobject(py)?.into_any(),
            self.secrets_baseline.into_pyobject(py)?.into_any(),
            self.policy_writer.into_pyobject(py)?.to_owned().into_any(),
            self.new_segment_login.into_pyobject(py)?.into_any(),
        ];
        PyTuple::new(py, items)
    }

    /// The identity's half of `FeatureExtractor.learn`: count the event at `ts` into the
    /// profiles, the values (`tkeys`, from `first` on: 2 skips the secret and folder of a call
    /// that did not succeed), the network it used alone (`place`) and the environment of a
    /// secret it read (`environment`), and fold it into the usual rates and gaps. Returns what
    /// `unlearn` needs to put the scalars back.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (ts, how, hod, tkeys, first, login_ok, place, environment, policy_write,
                        requests_1h, secrets_1h))]
    fn learn<'py>(&mut self, py: Python<'py>, ts: f64, how: usize, hod: usize,
                  tkeys: &Bound<'py, PyTuple>, first: usize, login_ok: bool,
                  place: Option<&Bound<'py, PyString>>, environment: Option<&Bound<'py, PyString>>,
                  policy_write: bool, requests_1h: f64, secrets_1h: f64) -> PyResult<PyObject> {
        if how >= HOD || hod >= 24 {
            return Err(PyValueError::new_err("hour out of range"));
        }
        let undo = (self.scalars(), self.rates()).into_pyobject(py)?.into_any().unbind();
        let keys = keys_of(tkeys)?;
        if login_ok {
            let new = match keys.get(SEGMENT) {
                Some(Some(k)) => self.seen.get(k) == 0,
                _ => true,
            };
            if new {
                self.new_segment_login = ts;
            }
        }
        self.profile.count(how, hod, 1);
        if let Some(p) = place {
            self.count(py, PLACE, Key::new(p)?);
        }
        if let Some(e) = environment {
            self.count(py, ENVIRONMENT, Key::new(e)?);
        }
        for (d, key) in keys.into_iter().enumerate().skip(first) {
            if let Some(k) = key {
                self.count(py, d, k);
            }
        }
        if policy_write {
            self.policy_writer = true;
        }
        self.learn_rates(ts, requests_1h, secrets_1h);
        if self.history != 0 {
            let since = ts - self.last_seen;
            let gap = (if since > 0.0 { since } else { 0.0 }).ln_1p();
            if self.history == 1 {
                self.gap_mean = gap;
            } else {
                let diff = gap - self.gap_mean;
                self.gap_mean += GAP_ALPHA * diff;
                self.gap_var = (1.0 - GAP_ALPHA) * (self.gap_var + GAP_ALPHA * diff * diff);
            }
        } else {
            self.first_seen = ts;
        }
        self.history += 1;
        if ts > self.last_seen {
            self.last_seen = ts;
        }
        Ok(undo)
    }

    /// Exactly reverse `learn` (learns are undone newest first): `tkeys` are the keys it counted
    /// (None where it skipped one), `undo` what it returned.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (how, hod, tkeys, place, environment, undo))]
    fn unlearn<'py>(&mut self, py: Python<'py>, how: usize, hod: usize,
                    tkeys: &Bound<'py, PyTuple>, place: Option<&Bound<'py, PyString>>,
                    environment: Option<&Bound<'py, PyString>>, undo: &Bound<'py, PyAny>)
                    -> PyResult<()> {
        type Saved = ((bool, f64, f64, f64, f64, f64), (i64, i64, f64, f64, i64, f64, f64));
        let (scalars, rates): Saved = undo.extract()?;
        if how >= HOD || hod >= 24 {
            return Err(PyValueError::new_err("hour out of range"));
        }
        self.profile.count(how, hod, -1);
        if let Some(p) = place {
            self.uncount(py, PLACE, &Key::new(p)?)?;
        }
        if let Some(e) = environment {
            self.uncount(py, ENVIRONMENT, &Key::new(e)?)?;
        }
        for (d, key) in keys_of(tkeys)?.iter().enumerate() {
            if let Some(k) = key {
                self.uncount(py, d, k)?;
            }
        }
        self.set_scalars(scalars);
        self.set_rates(rates);
        self.history -= 1;
        Ok(())
    }

    #[getter]
    fn history(&self) -> i64 {
        self.history
    }
    #[getter]
    fn requests_baseline(&self) -> f64 {
        self.requests_baseline
    }
    #[getter]
    fn secrets_baseline(&self) -> f64 {
        self.secrets_baseline
    }

    /// How many learned events carry tagged value `key` (0 for None or an unseen one).
    fn get(&self, key: &Bound<'_, PyAny>) -> PyResult<u32> {
        Ok(key_of(key)?.map_or(0, |k| self.seen.get(&k)))
    }

    /// Events per hour of the week then of the day (192 counts).
    fn hours(&self) -> Vec<u64> {
        self.profile.values()
    }

    /// (tagged value, learned events) in the order first counted.
    fn seen_items(&self, py: Python<'_>) -> Vec<(Py<PyString>, u32)> {
        self.seen.items().map(|e| (e.s.clone_ref(py), e.n)).collect()
    }

    fn distinct(&self) -> Vec<u32> {
        self.distinct.to_vec()
    }

    /// `(how, hod, history, seen, distinct, scalars, rates)`: plain lists and numbers, in the
    /// form snapshots kept them.
    fn to_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let values = self.profile.values();
        let seen = PyDict::new(py);
        for e in self.seen.items() {
            seen.set_item(e.s.bind(py), e.n)?;
        }
        let (s, r) = (self.scalars(), self.rates());
        PyTuple::new(py, [
            PyList::new(py, &values[..HOD])?.into_any(),
            PyList::new(py, &values[HOD..])?.into_any(),
            self.history.into_pyobject(py)?.into_any(),
            seen.into_any(),
            PyList::new(py, self.distinct)?.into_any(),
            PyList::new(py, [s.0.into_pyobject(py)?.to_owned().into_any(),
                             s.1.into_pyobject(py)?.into_any(), s.2.into_pyobject(py)?.into_any(),
                             s.3.into_pyobject(py)?.into_any(), s.4.into_pyobject(py)?.into_any(),
                             s.5.into_pyobject(py)?.into_any()])?.into_any(),
            PyList::new(py, [r.0.into_pyobject(py)?.into_any(), r.1.into_pyobject(py)?.into_any(),
                             r.2.into_pyobject(py)?.into_any(), r.3.into_pyobject(py)?.into_any(),
                             r.4.into_pyobject(py)?.into_any(), r.5.into_pyobject(py)?.into_any(),
                             r.6.into_pyobject(py)?.into_any()])?.into_any(),
        ])
    }

    /// A baseline from the parts of `to_state` (a snapshot's, or a dormant summary's).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn from_state(py: Python<'_>, how: &Bound<'_, PyAny>, hod: &Bound<'_, PyAny>, history: i64,
                  seen: &Bound<'_, PyDict>, distinct: &Bound<'_, PyAny>,
                  scalars: &Bound<'_, PyAny>, rates: &Bound<'_, PyAny>) -> PyResult<Baseline> {
        let mut b = Baseline::new();
        let mut values: Vec<u64> = how.extract()?;
        values.extend(hod.extract::<Vec<u64>>()?);
        if values.len() != HOURS {
            return Err(PyValueError::new_err("an hour profile of 192 counts"));
        }
        b.profile = Profile::of(&values);
        b.history = history;
        b.seen = Counts::load(py, seen)?;
        let distinct: Vec<u32> = distinct.extract()?;
        if distinct.len() != COUNTED {
            return Err(PyValueError::new_err("distinct values of 10 kinds"));
        }
        b.distinct.copy_from_slice(&distinct);
        let s = items_of(scalars)?;
        let r = items_of(rates)?;
        if s.len() != 6 || r.len() != 7 {
            return Err(PyValueError::new_err("baseline scalars of an unknown shape"));
        }
        b.set_scalars((s[0].extract()?, s[1].extract()?, s[2].extract()?, s[3].extract()?,
                       s[4].extract()?, s[5].extract()?));
        b.set_rates((r[0].extract()?, r[1].extract()?, r[2].extract()?, r[3].extract()?,
                     r[4].extract()?, r[5].extract()?, r[6].extract()?));
        Ok(b)
    }
}
