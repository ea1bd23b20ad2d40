//! An event's hours and novelty keys in one call: `features.hour_slots`, `novelty.dimension_keys`
//! and `novelty.tagged_keys` together, for `FeatureExtractor.derive` (the Python functions stay
//! the reference, `tests/test_native_keys.py`). Strings are looked up by Python's own hash in
//! dicts, so every string an event can hold (a lone surrogate included) is a key like any other.

use crate::windows::floor_div;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

const DIMENSIONS: usize = 8; // novelty.DIMENSIONS
const TAGGED_MAX: usize = 20_000; // novelty._TAGGED_MAX, per dimension: values are attacker-controlled
const FAMILIES_MAX: usize = 10_000; // novelty._FAMILY_CACHE_MAX: kept once full, never cleared
const FOLDERS_MAX: usize = 20_000;

#[pyclass(module = "secretscope._native")]
pub struct EventKeys {
    agent_family: PyObject,
    tags: Vec<Py<PyString>>,   // chr(0x10 + d), the tag of dimension d
    tagged: Vec<Py<PyDict>>,   // per dimension: value -> tag + value (novelty.tagged)
    folders: Py<PyDict>,       // secret -> its folder
    families: Py<PyDict>,      // user agent -> novelty.agent_family of it
    mounts: Py<PyDict>,        // namespace -> mount type -> "namespace/mount type"
}

/// `d.get(key)`, or `make()` stored under it (the dict emptied first once it holds `max`;
/// with `keep_when_full`, not stored then instead).
fn cached<'py>(d: &Bound<'py, PyDict>, key: &Bound<'py, PyAny>, max: usize, keep_when_full: bool,
               make: impl FnOnce() -> PyResult<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    if let Some(v) = d.get_item(key)? {
        return Ok(v);
    }
    let v = make()?;
    if d.len() >= max {
        if keep_when_full {
            return Ok(v);
        }
        d.clear();
    }
    d.set_item(key, &v)?;
    Ok(v)
}

fn is_empty(s: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(s.len()? == 0)
}

#[pymethods]
impl EventKeys {
    #[new]
    fn new(py: Python<'_>, agent_family: PyObject) -> Self {
        let tag = |d: usize| PyString::new(py, &char::from_u32(0x10 + d as u32).unwrap().to_string()).unbind();
        EventKeys {
            agent_family,
            tags: (0..DIMENSIONS).map(tag).collect(),
            tagged: (0..DIMENSIONS).map(|_| PyDict::new(py).unbind()).collect(),
            folders: PyDict::new(py).unbind(),
            families: PyDict::new(py).unbind(),
            mounts: PyDict::new(py).unbind(),
        }
    }

    /// `(hour of week, hour of day, dimension_keys(event, segment, secret_access), their
    /// tagged keys)`.
    fn keys<'py>(&self, py: Python<'py>, event: &Bound<'py, PyAny>, segment: &Bound<'py, PyAny>,
                 secret_access: bool) -> PyResult<Bound<'py, PyTuple>> {
        let ts: f64 = event.getattr(intern!(py, "ts"))?.extract()?;
        let hour = floor_div(ts, 3600.0);
        let hod = hour.rem_euclid(24);
        // 1970-01-01 was a Thursday: day 0 has weekday 3
        let how = (hour.div_euclid(24) + 3).rem_euclid(7) * 24 + hod;
        let none = py.None().into_bound(py);
        let text = |name: &Bound<'py, PyString>| event.getattr(name);
        let or_none = |v: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
            Ok(if is_empty(&v)? { none.clone() } else { v })
        };
        let (secret, folder) = if secret_access {
            let secret = text(intern!(py, "secret"))?;
            let folder = if is_empty(&secret)? {
                none.clone()
            } else {
                cached(self.folders.bind(py), &secret, FOLDERS_MAX, false, || {
                    secret.call_method1(intern!(py, "rpartition"), ("/",))?.get_item(0)
                })?
            };
            (secret, folder)
        } else {
            (none.clone(), none.clone())
        };
        let agent = text(intern!(py, "user_agent"))?;
        let family = if is_empty(&agent)? {
            none.clone()
        } else {
            cached(self.families.bind(py), &agent, FAMILIES_MAX, true,
                   || self.agent_family.bind(py).call1((&agent,)))?
        };
        let ns = text(intern!(py, "namespace"))?;
        let mount = text(intern!(py, "mount_type"))?;
        let mount_key = if is_empty(&ns)? {
            mount
        } else {
            let per_ns = cached(self.mounts.bind(py), &ns, TAGGED_MAX, false,
                                || Ok(PyDict::new(py).into_any()))?;
            cached(per_ns.downcast::<PyDict>()?, &mount, TAGGED_MAX, false, || {
                ns.add("/")?.add(&mount)
            })?
        };
        let keys = [secret, folder, text(intern!(py, "operation"))?, segment.clone(),
                    or_none(text(intern!(py, "remote_address"))?)?, family,
                    or_none(text(intern!(py, "auth_method"))?)?, mount_key];
        let mut tagged = Vec::with_capacity(DIMENSIONS);
        for (d, key) in keys.iter().enumerate() {
            tagged.push(if key.is_none() {
                none.clone()
            } else {
                cached(self.tagged[d].bind(py), key, TAGGED_MAX, false,
                       || self.tags[d].bind(py).add(key))?
            });
        }
        PyTuple::new(py, [how.into_pyobject(py)?.into_any(), hod.into_pyobject(py)?.into_any(),
                          PyTuple::new(py, keys)?.into_any(), PyTuple::new(py, tagged)?.into_any()])
    }
}
