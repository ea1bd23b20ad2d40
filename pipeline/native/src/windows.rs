//! Event-time windows, the compiled twins of `secretscope/windows.py` (the reference they are
//! checked against in `tests/test_native_windows.py`): the same entries, the same expiry, the
//! same counts for any sequence of calls, late and out-of-order events included.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};

/// Python's `int(ts // width)` for a float `ts` and a positive integer `width`, to the bit:
/// CPython's float floor division (Objects/floatobject.c), not `floor(ts / width)`, which can
/// differ by one at bucket edges.
pub fn floor_div(ts: f64, width: f64) -> i64 {
    let m = ts % width; // C's fmod
    let mut div = (ts - m) / width;
    if m != 0.0 && (width < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    let floordiv = if div != 0.0 {
        let f = div.floor();
        if div - f > 0.5 {
            f + 1.0
        } else {
            f
        }
    } else {
        0.0
    };
    floordiv as i64
}

/// Room for one more entry in `v`, grown by a quarter rather than doubled: there is one set of
/// windows per identity, and most hold a handful of entries, so spare capacity is most of what
/// they would hold (still amortised constant time per entry).
#[inline]
pub fn room<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(1));
    }
}

/// Give back most of `v`'s spare capacity after entries left it (as Python's arrays do).
#[inline]
pub fn trim<T>(v: &mut Vec<T>) {
    if v.capacity() > 2 * v.len() + 4 {
        v.shrink_to(v.len() + v.len() / 4 + 1);
    }
}

/// The items of a list or tuple (a snapshot holds lists where the state had tuples).
pub fn items_of<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    obj.try_iter()?.collect()
}

/// A pair `[a, b]` or `(a, b)` of a snapshot.
pub fn pair<'py, A, B>(obj: &Bound<'py, PyAny>) -> PyResult<(A, B)>
where
    A: FromPyObject<'py>,
    B: FromPyObject<'py>,
{
    let v = items_of(obj)?;
    if v.len() != 2 {
        return Err(pyo3::exceptions::PyValueError::new_err("expected a pair"));
    }
    Ok((v[0].extract()?, v[1].extract()?))
}

/// Count of events in the last `n` buckets of `width` seconds: the (bucket, count) pairs that
/// hold events, oldest first, as `windows.WindowCounter` keeps them. A pair is 8 bytes: its
/// bucket as an offset from `base`, which moves along with the window.
#[derive(Default)]
pub struct Counter {
    started: bool,
    // Python's counter moved its buckets to a 64-bit array from the first that did not fit 32
    // bits, and from then on never took its fast path in add_count (which, for a window started
    // in the first hour of 1970, counts what the general path drops): kept for the same counts
    wide: bool,
    total: u32,
    base: i64,
    newest: i64,
    valid_from: i64,
    pairs: Vec<(i32, u32)>,
}

fn fits(x: i64) -> bool {
    -(1 << 31) < x && x < 1 << 31
}

// Offsets stay within this of base; beyond it base moves to the newest bucket. Every kept
// bucket is within n of the newest (n is at most a few hundred), so they fit 32 bits. (A
// variable only so that the tests can make it small enough to reach.)
pub static REBASE: AtomicI64 = AtomicI64::new(1 << 30);

impl Counter {
    #[inline]
    fn bucket(&self, i: usize) -> i64 {
        self.base + self.pairs[i].0 as i64
    }

    fn start(&mut self, bucket: i64, n: i64) {
        // as a ring that starts before bucket -1: a first bucket within n of it empties nothing
        self.valid_from = if bucket + 1 >= n { bucket } else { -1 };
        self.newest = bucket;
        self.base = bucket;
        self.started = true;
        self.wide = !fits(bucket);
    }

    fn advance(&mut self, bucket: i64, n: i64) {
        if !self.started {
            self.start(bucket, n);
            return;
        }
        if bucket >= 1 << 31 {
            self.wide = true;
        }
        if bucket - self.newest >= n {
            self.pairs.clear();
            trim(&mut self.pairs);
            self.total = 0;
            self.valid_from = bucket;
            self.base = bucket;
        } else if self.total != 0 {
            let floor = bucket - n;
            let mut k = 0;
            while k < self.pairs.len() && self.bucket(k) <= floor {
                self.total -= self.pairs[k].1;
                k += 1;
            }
            if k != 0 {
                self.pairs.drain(..k);
                trim(&mut self.pairs);
            }
        }
        self.newest = bucket;
        if bucket - self.base > REBASE.load(Ordering::Relaxed) {
            let shift = bucket - self.base; // the pairs left are within n of bucket
            for p in self.pairs.iter_mut() {
                p.0 = (p.0 as i64 - shift) as i32;
            }
            self.base = bucket;
        }
    }

    fn put(&mut self, bucket: i64, n: i64) {
        if bucket <= self.newest - n || bucket < self.valid_from {
            return; // late events older than the window are dropped
        }
        self.total += 1;
        let mut k = self.pairs.len();
        while k > 0 && self.bucket(k - 1) > bucket {
            k -= 1;
        }
        if k > 0 && self.bucket(k - 1) == bucket {
            self.pairs[k - 1].1 += 1;
        } else {
            // bucket is above newest - n and base is at most newest: the offset fits
            let offset = (bucket - self.base) as i32;
            room(&mut self.pairs);
            self.pairs.insert(k, (offset, 1));
        }
    }

    pub fn add(&mut self, ts: f64, width: f64, n: i64) {
        let bucket = floor_div(ts, width);
        if !self.started || bucket > self.newest {
            self.advance(bucket, n);
        }
        self.put(bucket, n);
    }

    /// `add` then the count, with Python's fast path: an event in the newest bucket, or in a
    /// new bucket within the window, is counted without the check against `valid_from`.
    pub fn add_count(&mut self, ts: f64, width: f64, n: i64) -> u64 {
        let bucket = floor_div(ts, width);
        if self.started && !self.wide && bucket < 1 << 31 {
            let newest = self.newest;
            if bucket == newest {
                let last = self.pairs.len().wrapping_sub(1);
                if !self.pairs.is_empty() && self.bucket(last) == bucket {
                    self.pairs[last].1 += 1;
                    self.total += 1;
                    return self.total as u64;
                }
            } else if newest < bucket && bucket < newest + n {
                self.advance(bucket, n); // within the window: drops only what fell out of it
                let offset = (bucket - self.base) as i32;
                room(&mut self.pairs);
                self.pairs.push((offset, 1));
                self.total += 1;
                return self.total as u64;
            }
        }
        self.add(ts, width, n);
        self.total as u64
    }

    pub fn count(&mut self, ts: f64, width: f64, n: i64) -> u64 {
        if self.total == 0 {
            return 0; // nothing to expire: the window does not move (as in Python)
        }
        let bucket = floor_div(ts, width);
        if bucket > self.newest {
            self.advance(bucket, n);
        }
        self.total as u64
    }

    /// `[[bucket, count, ...], total, newest, valid_from]`, as `WindowCounter.to_state`.
    pub fn to_state(&self, py: Python<'_>) -> PyObject {
        let flat: Vec<i64> = (0..self.pairs.len())
            .flat_map(|i| [self.bucket(i), self.pairs[i].1 as i64])
            .collect();
        let (newest, valid_from) = if self.started { (self.newest, self.valid_from) } else { (-1, -1) };
        (flat, self.total, newest, valid_from).into_pyobject(py).unwrap().into_any().unbind()
    }

    pub fn load_state(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = items_of(state)?;
        if v.len() != 4 {
            return Err(pyo3::exceptions::PyValueError::new_err("a window counter of 4 parts"));
        }
        let (flat, total, newest, valid_from): (Vec<i64>, u32, i64, i64) =
            (v[0].extract()?, v[1].extract()?, v[2].extract()?, v[3].extract()?);
        *self = Counter::default();
        if newest < 0 && flat.is_empty() {
            return Ok(());
        }
        if flat.len() % 2 != 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("window pairs of odd length"));
        }
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        for c in flat.chunks(2) {
            let offset = i32::try_from(c[0].wrapping_sub(newest)).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err("a window bucket far from its newest")
            })?;
            let count = u32::try_from(c[1]).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err("a window count out of range")
            })?;
            pairs.push((offset, count));
        }
        self.pairs = pairs;
        self.total = total;
        self.base = newest;
        self.newest = newest;
        self.valid_from = valid_from;
        self.started = true;
        self.wide = !(fits(newest) && fits(valid_from) && flat.iter().all(|&x| fits(x)));
        Ok(())
    }
}

/// An entry of a [`Recent`] window: its time alone, or its time and event id (the windows whose
/// findings name the events behind them). A window of times holds 8 bytes an entry and no
/// vector of ids.
pub trait Stamp: Sized {
    fn stamp(ts: f64, id: &Bound<'_, PyString>) -> Self;
    fn ts(&self) -> f64;
    /// The event id, "" where the window keeps none (as `windows.Recent.items`).
    fn id(&self, py: Python<'_>) -> Py<PyString>;
    /// `[times, ids or None]`, as `Recent.to_state`.
    fn state(entries: &[Self], py: Python<'_>) -> PyObject;
    fn load(state: &Bound<'_, PyAny>) -> PyResult<Vec<Self>>;
}

impl Stamp for f64 {
    #[inline]
    fn stamp(ts: f64, _id: &Bound<'_, PyString>) -> Self {
        ts
    }
    #[inline]
    fn ts(&self) -> f64 {
        *self
    }
    fn id(&self, py: Python<'_>) -> Py<PyString> {
        PyString::new(py, "").unbind()
    }
    fn state(entries: &[Self], py: Python<'_>) -> PyObject {
        (entries.to_vec(), py.None()).into_pyobject(py).unwrap().into_any().unbind()
    }
    fn load(state: &Bound<'_, PyAny>) -> PyResult<Vec<Self>> {
        let (times, _ids): (Vec<f64>, Bound<'_, PyAny>) = pair(state)?;
        Ok(times)
    }
}

/// (time, event id)
pub struct Stamped(f64, Py<PyString>);

impl Stamp for Stamped {
    #[inline]
    fn stamp(ts: f64, id: &Bound<'_, PyString>) -> Self {
        Stamped(ts, id.clone().unbind())
    }
    #[inline]
    fn ts(&self) -> f64 {
        self.0
    }
    fn id(&self, py: Python<'_>) -> Py<PyString> {
        self.1.clone_ref(py)
    }
    fn state(entries: &[Self], py: Python<'_>) -> PyObject {
        let times: Vec<f64> = entries.iter().map(|e| e.0).collect();
        let ids: Vec<Py<PyString>> = entries.iter().map(|e| e.1.clone_ref(py)).collect();
        (times, ids).into_pyobject(py).unwrap().into_any().unbind()
    }
    fn load(state: &Bound<'_, PyAny>) -> PyResult<Vec<Self>> {
        let (times, ids): (Vec<f64>, Option<Vec<Bound<'_, PyString>>>) = pair(state)?;
        let ids = ids.unwrap_or_default();
        if ids.len() != times.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a window's ids and times differ in length"));
        }
        Ok(times.into_iter().zip(ids).map(|(t, s)| Stamped(t, s.unbind())).collect())
    }
}

/// Timestamps (and, for some, event ids) of the last events of one kind within a horizon,
/// leaving by time or beyond `maxlen` oldest first, as `windows.Recent`.
pub struct Recent<E: Stamp> {
    v: Vec<E>,
}

impl<E: Stamp> Default for Recent<E> {
    fn default() -> Self {
        Recent { v: Vec::new() }
    }
}

impl<E: Stamp> Recent<E> {
    fn drop_front(&mut self, k: usize) {
        self.v.drain(..k);
        trim(&mut self.v);
    }

    fn push(&mut self, ts: f64, id: &Bound<'_, PyString>) {
        room(&mut self.v);
        self.v.push(E::stamp(ts, id));
    }

    /// Record an event (its id is kept only by a window of [`Stamped`] entries).
    pub fn add(&mut self, ts: f64, id: &Bound<'_, PyString>, maxlen: usize) {
        self.push(ts, id);
        if self.v.len() > maxlen {
            self.drop_front(1);
        }
    }

    pub fn add_count(&mut self, ts: f64, id: &Bound<'_, PyString>, horizon: f64,
                     maxlen: usize) -> usize {
        self.push(ts, id);
        let floor = ts - horizon;
        let size = self.v.len();
        if self.v[0].ts() <= floor || size > maxlen {
            let mut k = 0;
            while k < size && (self.v[k].ts() <= floor || size - k > maxlen) {
                k += 1;
            }
            self.drop_front(k);
        }
        self.v.len()
    }

    pub fn count(&mut self, ts: f64, horizon: f64) -> usize {
        if self.v.is_empty() {
            return 0;
        }
        let floor = ts - horizon;
        if self.v[0].ts() <= floor {
            let size = self.v.len();
            let mut k = 1;
            while k < size && self.v[k].ts() <= floor {
                k += 1;
            }
            self.drop_front(k);
        }
        self.v.len()
    }

    /// `[times, ids or None]`, as `Recent.to_state`.
    pub fn to_state(&self, py: Python<'_>) -> PyObject {
        E::state(&self.v, py)
    }

    pub fn load_state(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        self.v = E::load(state)?;
        Ok(())
    }

    /// (time, event id) oldest first; ids are "" where they are not kept.
    pub fn items(&self, py: Python<'_>) -> Vec<(f64, Py<PyString>)> {
        self.v.iter().map(|e| (e.ts(), e.id(py))).collect()
    }
}

/// A Python string made the interned one of its value, so equal keys are one object and can be
/// compared and hashed by address (the windows below key by it).
pub fn interned(s: &Bound<'_, PyString>) -> Py<PyString> {
    let py = s.py();
    let mut ptr = s.clone().into_ptr();
    unsafe {
        ffi::PyUnicode_InternInPlace(&mut ptr);
        Py::from_owned_ptr(py, ptr)
    }
}

const SMALL: usize = 16; // keys kept in a plain list before an index takes over

/// Distinct keys seen within a horizon, in last-seen order (oldest first), as
/// `windows.Distinct`: a key seen again at a time not older than its last moves to the end, and
/// keys leave from the front once their last time is at or before `ts - horizon`.
#[derive(Default)]
pub struct Distinct {
    // few keys: (key, last seen) in order
    small: Vec<(Py<PyString>, f64)>,
    // many keys: key -> (last seen, sequence of its live entry); entries in order, with stale
    // ones (a key that moved on) skipped
    big: Option<Box<BigDistinct>>,
}

struct BigDistinct {
    last: HashMap<usize, (Py<PyString>, f64, u64)>,
    order: VecDeque<(usize, u64)>,
    seq: u64,
}

impl BigDistinct {
    fn push(&mut self, key: Py<PyString>, ts: f64) {
        let addr = key.as_ptr() as usize;
        self.seq += 1;
        self.last.insert(addr, (key, ts, self.seq));
        self.order.push_back((addr, self.seq));
        if self.order.len() > 2 * self.last.len() + SMALL {
            let last = &self.last;
            self.order.retain(|(a, s)| last.get(a).is_some_and(|e| e.2 == *s));
        }
    }

    /// Drop keys from the front while their last time is at or before floor.
    fn expire(&mut self, floor: f64) {
        while let Some(&(addr, seq)) = self.order.front() {
            match self.last.get(&addr) {
                Some(e) if e.2 == seq => {
                    if e.1 > floor {
                        return;
                    }
                    self.last.remove(&addr);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }
}

impl Distinct {
    pub fn add(&mut self, key: &Bound<'_, PyString>, ts: f64, horizon: f64) -> usize {
        let key = interned(key);
        let addr = key.as_ptr() as usize;
        let floor = ts - horizon;
        if let Some(big) = self.big.as_mut() {
            if big.last.get(&addr).map_or(true, |e| ts >= e.1) {
                big.push(key, ts);
            }
            big.expire(floor);
            return big.last.len();
        }
        match self.small.iter().position(|(k, _)| k.as_ptr() as usize == addr) {
            None => {
                room(&mut self.small);
                self.small.push((key, ts));
                if self.small.len() > SMALL {
                    let mut big = Box::new(BigDistinct {
                        last: HashMap::with_capacity(2 * SMALL),
                        order: VecDeque::with_capacity(2 * SMALL),
                        seq: 0,
                    });
                    for (k, t) in self.small.drain(..) {
                        big.push(k, t);
                    }
                    self.small = Vec::new();
                    big.expire(floor);
                    let n = big.last.len();
                    self.big = Some(big);
                    return n;
                }
            }
            Some(i) => {
                if ts >= self.small[i].1 {
                    let (k, _) = self.small.remove(i);
                    self.small.push((k, ts));
                }
            }
        }
        self.expire_small(floor);
        self.small.len()
    }

    fn expire_small(&mut self, floor: f64) {
        let k = self.small.iter().take_while(|(_, t)| *t <= floor).count();
        if k != 0 {
            self.small.drain(..k);
            trim(&mut self.small);
        }
    }

    pub fn count(&mut self, ts: f64, horizon: f64) -> usize {
        let floor = ts - horizon;
        match self.big.as_mut() {
            Some(big) => {
                big.expire(floor);
                big.last.len()
            }
            None => {
                self.expire_small(floor);
                self.small.len()
            }
        }
    }

    /// (key, last seen) oldest first.
    pub fn items(&self, py: Python<'_>) -> Vec<(Py<PyString>, f64)> {
        match &self.big {
            None => self.small.iter().map(|(k, t)| (k.clone_ref(py), *t)).collect(),
            Some(big) => big
                .order
                .iter()
                .filter_map(|(a, s)| match big.last.get(a) {
                    Some(e) if e.2 == *s => Some((e.0.clone_ref(py), e.1)),
                    _ => None,
                })
                .collect(),
        }
    }

    pub fn load(&mut self, items: &Bound<'_, PyAny>) -> PyResult<()> {
        let items: Vec<(Bound<'_, PyString>, f64)> =
            items_of(items)?.iter().map(pair).collect::<PyResult<_>>()?;
        *self = Distinct::default();
        if items.len() <= SMALL {
            // as a dict's update: a repeated key keeps its first place and takes the last time
            for (k, t) in items {
                let key = interned(&k);
                match self.small.iter_mut().find(|(x, _)| x.as_ptr() == key.as_ptr()) {
                    Some(entry) => entry.1 = t,
                    None => self.small.push((key, t)),
                }
            }
        } else {
            let mut big = Box::new(BigDistinct {
                last: HashMap::with_capacity(items.len()),
                order: VecDeque::with_capacity(items.len()),
                seq: 0,
            });
            for (k, t) in items {
                big.push(interned(&k), t);
            }
            self.big = Some(big);
        }
        Ok(())
    }
}

/// The last `maxlen` (time, event id) of an identity, oldest first, as `windows.RecentEvents`:
/// 24 bytes an entry while every id is a UUID in the lowercase form Vault logs, the ids as
/// strings from the first that is not. Up to `SLACK` older entries stay until they are cut
/// together.
pub enum RecentEvents {
    Packed(Vec<(f64, [u8; 16])>),
    Strings(Vec<(f64, Py<PyString>)>),
}

pub const SLACK: usize = 16;

impl Default for RecentEvents {
    fn default() -> Self {
        RecentEvents::Packed(Vec::new())
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// 16 bytes for an id in the lowercase UUID form, else None.
pub fn pack(id: &str) -> Option<[u8; 16]> {
    let b = id.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut j = 0;
    let mut i = 0;
    while i < 36 {
        if i == 8 || i == 13 || i == 18 || i == 23 {
            i += 1;
            continue;
        }
        out[j] = (hex(b[i])? << 4) | hex(b[i + 1])?;
        j += 1;
        i += 2;
    }
    Some(out)
}

pub fn unpack(p: &[u8; 16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in p.iter().enumerate() {
        if i == 4 || i == 6 || i == 8 || i == 10 {
            s.push('-');
        }
        s.push(DIGITS[(byte >> 4) as usize] as char);
        s.push(DIGITS[(byte & 15) as usize] as char);
    }
    s
}

impl RecentEvents {
    pub fn append(&mut self, ts: f64, id: &Bound<'_, PyString>, maxlen: usize) -> PyResult<()> {
        if let RecentEvents::Packed(v) = self {
            if let Some(p) = pack(id.to_str()?) {
                room(v);
                v.push((ts, p));
                if v.len() > maxlen + SLACK {
                    v.drain(..v.len() - maxlen);
                }
                return Ok(());
            }
            let py = id.py();
            let strings = v
                .iter()
                .map(|(t, p)| (*t, PyString::new(py, &unpack(p)).unbind()))
                .collect();
            *self = RecentEvents::Strings(strings);
        }
        if let RecentEvents::Strings(v) = self {
            room(v);
            v.push((ts, id.clone().unbind()));
            if v.len() > maxlen + SLACK {
                v.drain(..v.len() - maxlen);
            }
        }
        Ok(())
    }

    pub fn len(&self, maxlen: usize) -> usize {
        let n = match self {
            RecentEvents::Packed(v) => v.len(),
            RecentEvents::Strings(v) => v.len(),
        };
        n.min(maxlen)
    }

    /// The kept entries (the last `maxlen`), oldest first; `skip` of them left out at the start.
    pub fn items(&self, py: Python<'_>, maxlen: usize, skip: usize, take: usize)
                 -> Vec<(f64, Py<PyString>)> {
        match self {
            RecentEvents::Packed(v) => {
                let first = v.len().saturating_sub(maxlen) + skip;
                v.iter().skip(first).take(take)
                    .map(|(t, p)| (*t, PyString::new(py, &unpack(p)).unbind())).collect()
            }
            RecentEvents::Strings(v) => {
                let first = v.len().saturating_sub(maxlen) + skip;
                v.iter().skip(first).take(take).map(|(t, s)| (*t, s.clone_ref(py))).collect()
            }
        }
    }
}
