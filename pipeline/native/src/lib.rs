//! `secretscope._native`: the per-identity window state of the feature extractor in compiled
//! code. `features.FeatureExtractor.observe_windows` makes one call per event into
//! [`IdentityWindows::observe`], which updates every window of the identity and returns the
//! window part of the event's features; `secretscope/windows.py` is the reference each window
//! is checked against (`tests/test_native_windows.py`).

use pyo3::prelude::*;
use pyo3::types::PyString;

mod alloc;
mod baseline;
mod identity;
mod keys;
mod peers;
mod vault;
mod windows;

use identity::IdentityWindows;
use windows::{Counter, Distinct, Recent, RecentEvents, Stamped};

/// `windows.WindowCounter` with the same methods, for the tests that compare the two.
#[pyclass(module = "secretscope._native", name = "WindowCounter")]
struct PyCounter {
    inner: Counter,
    width: f64,
    n: i64,
}

#[pymethods]
impl PyCounter {
    #[new]
    fn new(width: i64, n: i64) -> Self {
        PyCounter { inner: Counter::default(), width: width as f64, n }
    }
    fn add(&mut self, ts: f64) {
        self.inner.add(ts, self.width, self.n);
    }
    fn add_count(&mut self, ts: f64) -> u64 {
        self.inner.add_count(ts, self.width, self.n)
    }
    fn count(&mut self, ts: f64) -> u64 {
        self.inner.count(ts, self.width, self.n)
    }
    fn to_state(&self, py: Python<'_>) -> PyObject {
        self.inner.to_state(py)
    }
    fn load_state(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner.load_state(state)
    }
}

/// A window of times or of (time, event id), for [`PyRecent`].
enum AnyRecent {
    Times(Recent<f64>),
    Ids(Recent<Stamped>),
}

macro_rules! each {
    ($w:expr, $r:ident => $body:expr) => {
        match $w {
            AnyRecent::Times($r) => $body,
            AnyRecent::Ids($r) => $body,
        }
    };
}

/// `windows.Recent` with the same methods, for the tests that compare the two.
#[pyclass(module = "secretscope._native", name = "Recent")]
struct PyRecent {
    inner: AnyRecent,
    horizon: f64,
    maxlen: usize,
}

#[pymethods]
impl PyRecent {
    #[new]
    #[pyo3(signature = (horizon, maxlen=256, ids=false))]
    fn new(horizon: f64, maxlen: usize, ids: bool) -> Self {
        let inner = if ids { AnyRecent::Ids(Recent::default()) }
                    else { AnyRecent::Times(Recent::default()) };
        PyRecent { inner, horizon, maxlen }
    }
    #[pyo3(signature = (ts, event_id=None))]
    fn add(&mut self, py: Python<'_>, ts: f64, event_id: Option<&Bound<'_, PyString>>) {
        let id = event_id.cloned().unwrap_or_else(|| PyString::new(py, ""));
        each!(&mut self.inner, w => w.add(ts, &id, self.maxlen))
    }
    #[pyo3(signature = (ts, event_id=None))]
    fn add_count(&mut self, py: Python<'_>, ts: f64, event_id: Option<&Bound<'_, PyString>>)
                 -> usize {
        let id = event_id.cloned().unwrap_or_else(|| PyString::new(py, ""));
        each!(&mut self.inner, w => w.add_count(ts, &id, self.horizon, self.maxlen))
    }
    fn count(&mut self, ts: f64) -> usize {
        each!(&mut self.inner, w => w.count(ts, self.horizon))
    }
    #[getter]
    fn items(&self, py: Python<'_>) -> Vec<(f64, Py<PyString>)> {
        each!(&self.inner, w => w.items(py))
    }
    fn to_state(&self, py: Python<'_>) -> PyObject {
        each!(&self.inner, w => w.to_state(py))
    }
    fn load_state(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        each!(&mut self.inner, w => w.load_state(state))
    }
}

/// `windows.Distinct` with the same methods, for the tests that compare the two.
#[pyclass(module = "secretscope._native", name = "Distinct")]
struct PyDistinct {
    inner: Distinct,
    horizon: f64,
}

#[pymethods]
impl PyDistinct {
    #[new]
    fn new(horizon: f64) -> Self {
        PyDistinct { inner: Distinct::default(), horizon }
    }
    fn add(&mut self, key: &Bound<'_, PyString>, ts: f64) -> usize {
        self.inner.add(key, ts, self.horizon)
    }
    fn count(&mut self, ts: f64) -> usize {
        self.inner.count(ts, self.horizon)
    }
    fn items(&self, py: Python<'_>) -> Vec<(Py<PyString>, f64)> {
        self.inner.items(py)
    }
    fn load(&mut self, items: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner.load(items)
    }
}

/// `windows.RecentEvents` with the same methods, for the tests that compare the two.
#[pyclass(module = "secretscope._native", name = "RecentEvents")]
struct PyRecentEvents {
    inner: RecentEvents,
    maxlen: usize,
}

#[pymethods]
impl PyRecentEvents {
    #[new]
    #[pyo3(signature = (maxlen=64))]
    fn new(maxlen: usize) -> Self {
        PyRecentEvents { inner: RecentEvents::default(), maxlen }
    }
    fn append(&mut self, ts: f64, event_id: &Bound<'_, PyString>) -> PyResult<()> {
        self.inner.append(ts, event_id, self.maxlen)
    }
    fn __len__(&self) -> usize {
        self.inner.len(self.maxlen)
    }
    fn items(&self, py: Python<'_>) -> Vec<(f64, Py<PyString>)> {
        self.inner.items(py, self.maxlen, 0, self.maxlen)
    }
}

/// Bytes the module's own allocations hold now (every Rust allocation goes through Python's
/// raw allocator, so tracemalloc sees them too).
#[pyfunction]
fn allocated() -> usize {
    alloc::allocated()
}

/// Set how far a window counter's buckets may move from its base before it moves the base
/// (for the tests: the default, 2**30, is out of their reach); returns the previous value.
#[pyfunction]
fn _set_rebase(buckets: i64) -> i64 {
    windows::REBASE.swap(buckets.max(1), std::sync::atomic::Ordering::Relaxed)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<IdentityWindows>()?;
    m.add_class::<baseline::Baseline>()?;
    m.add_class::<peers::PeerGroup>()?;
    m.add_class::<keys::EventKeys>()?;
    m.add_class::<vault::VaultEntry>()?;
    m.add_class::<vault::VaultJoiner>()?;
    m.add_function(wrap_pyfunction!(vault::decode_vault, m)?)?;
    m.add_function(wrap_pyfunction!(vault::set_vault_hooks, m)?)?;
    m.add_class::<PyCounter>()?;
    m.add_class::<PyRecent>()?;
    m.add_class::<PyDistinct>()?;
    m.add_class::<PyRecentEvents>()?;
    m.add_function(wrap_pyfunction!(allocated, m)?)?;
    m.add_function(wrap_pyfunction!(_set_rebase, m)?)?;
    for (name, value) in identity::CONSTANTS {
        m.add(name, value)?;
    }
    m.add("NON_SECRET_PREFIXES", identity::NON_SECRET_PREFIXES)?;
    m.add("POLICY_PREFIXES", identity::POLICY_PREFIXES)?;
    Ok(())
}
