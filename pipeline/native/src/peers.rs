//! A peer group: what the identities holding the same policies have done, learned from their
//! baseline events. The Python class it replaced is the reference it is checked against, kept
//! in `tests/test_native_peers.py`. `derive` gives the peer part of an event's features in one
//! call.

use crate::baseline::{key_of, Counts, Key, FREQUENT, INFREQUENT, INFREQUENT_SHARE, RARE, RARE_SHARE,
                      UNSEEN};
use crate::windows::items_of;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

// novelty.PEER_DIMENSIONS: the secret, folder, segment and user agent of dimension_keys
const DIMENSIONS: [usize; 4] = [0, 1, 3, 5];

fn to_dict<'py>(py: Python<'py>, counts: &Counts<u64>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for e in counts.items() {
        d.set_item(e.s.bind(py), e.n)?;
    }
    Ok(d)
}

fn key_at(keys: &Bound<'_, PyTuple>, d: usize) -> PyResult<Option<Key>> {
    key_of(&keys.get_item(d)?)
}

/// The peer dimensions' keys of an event's `dimension_keys`, once its hour of the day is
/// checked.
fn peer_keys(keys: &Bound<'_, PyTuple>, hod: usize) -> PyResult<Vec<Option<Key>>> {
    if hod >= 24 {
        return Err(PyValueError::new_err("an hour of the day is 0-23"));
    }
    DIMENSIONS.iter().map(|&d| key_at(keys, d)).collect()
}

#[pyclass(module = "secretscope._native")]
pub struct PeerGroup {
    #[pyo3(get)]
    key: Py<PyString>,
    #[pyo3(get)]
    history: i64,
    counts: [Counts<u64>; 4],
    hod: [i64; 24],
    members: Counts<u64>,
    #[pyo3(get)]
    policy_writes: i64,
}

#[pymethods]
impl PeerGroup {
    #[new]
    fn new(key: Py<PyString>) -> Self {
        PeerGroup { key, history: 0, counts: Default::default(), hod: [0; 24],
                    members: Counts::default(), policy_writes: 0 }
    }

    /// Fold in a learned event of `identity`: `keys` are its `dimension_keys` (None where a
    /// dimension does not apply or is not counted), `hod` its hour of the day.
    fn learn(&mut self, py: Python<'_>, identity: &Bound<'_, PyString>,
             keys: &Bound<'_, PyTuple>, hod: usize, policy_write: bool) -> PyResult<()> {
        let found = peer_keys(keys, hod)?;
        self.history += 1;
        self.policy_writes += policy_write as i64;
        self.hod[hod] += 1;
        self.members.count(py, Key::new(identity)?);
        for (tally, key) in self.counts.iter_mut().zip(found) {
            if let Some(key) = key {
                tally.count(py, key);
            }
        }
        Ok(())
    }

    /// Exactly reverse `learn` with the same arguments.
    fn unlearn(&mut self, py: Python<'_>, identity: &Bound<'_, PyString>,
               keys: &Bound<'_, PyTuple>, hod: usize, policy_write: bool) -> PyResult<()> {
        let found = peer_keys(keys, hod)?;
        self.members.uncount(py, &Key::new(identity)?)?;
        for (tally, key) in self.counts.iter_mut().zip(found.iter()) {
            if let Some(key) = key {
                tally.uncount(py, key)?;
            }
        }
        self.history -= 1;
        self.policy_writes -= policy_write as i64;
        self.hod[hod] -= 1;
        Ok(())
    }

    /// The peer part of an event's features: `(classes, novelty, hod_share, folders, members)`
    /// (`novelty.frequency_classes` of the secret, folder, segment and user agent of `keys`
    /// against the group's counts; the group's share of events in the hour of the day `hod`
    /// and the hours either side; how many folders and members it has).
    fn derive<'py>(&self, py: Python<'py>, keys: &Bound<'py, PyTuple>, hod: usize)
                   -> PyResult<Bound<'py, PyTuple>> {
        if hod >= 24 {
            return Err(PyValueError::new_err("an hour of the day is 0-23"));
        }
        let total = self.history;
        let mut classes = [FREQUENT; 4];
        let mut novelty = 0.0f64;
        if total == 0 {
            novelty = 1.0;
            for (i, &d) in DIMENSIONS.iter().enumerate() {
                if !keys.get_item(d)?.is_none() {
                    classes[i] = UNSEEN;
                }
            }
        } else {
            let t = total as f64;
            let (rare, infrequent) = (RARE_SHARE * t, INFREQUENT_SHARE * t);
            for (i, &d) in DIMENSIONS.iter().enumerate() {
                let seen = &self.counts[i];
                let n = match key_at(keys, d)? {
                    None => total as u64,
                    Some(key) => seen.get(&key),
                };
                classes[i] = if n as f64 >= infrequent {
                    FREQUENT
                } else if n != 0 {
                    if n as f64 >= rare { INFREQUENT } else { RARE }
                } else {
                    let surprise = 1.0 - seen.len() as f64 / t;
                    if surprise > novelty {
                        novelty = surprise;
                    }
                    UNSEEN
                };
            }
        }
        let hod_share = if total != 0 {
            let h = &self.hod;
            (h[(hod + 23) % 24] + h[hod] + h[(hod + 1) % 24]) as f64 / total as f64
        } else {
            0.0
        };
        (PyList::new(py, classes)?, novelty, hod_share, self.counts[1].len() as f64,
         self.members.len() as f64).into_pyobject(py)
    }

    /// Learned events per value, one dict per peer dimension (secret, folder, segment, user
    /// agent), in the order first counted (a copy).
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.counts.iter().map(|c| to_dict(py, c)).collect::<PyResult<Vec<_>>>()?)
    }

    /// The values of peer dimension `i` (0 secret, 1 folder, 2 segment, 3 user agent) the
    /// group has learned, in the order first counted.
    fn values(&self, py: Python<'_>, i: usize) -> PyResult<Vec<Py<PyString>>> {
        let tally = self.counts.get(i)
            .ok_or_else(|| PyValueError::new_err("a peer dimension is 0-3"))?;
        Ok(tally.items().map(|e| e.s.clone_ref(py)).collect())
    }

    /// Learned events per member identity (a copy).
    #[getter]
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        to_dict(py, &self.members)
    }

    /// Learned events per hour of the day (a copy).
    #[getter]
    fn hod(&self) -> Vec<i64> {
        self.hod.to_vec()
    }

    /// Plain lists and dicts, as snapshots held them: `[history, counts, hod, members,
    /// policy_writes]`.
    fn to_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, [
            self.history.into_pyobject(py)?.into_any(),
            self.counts(py)?.into_any(),
            PyList::new(py, self.hod)?.into_any(),
            self.members(py)?.into_any(),
            self.policy_writes.into_pyobject(py)?.into_any(),
        ])
    }

    #[staticmethod]
    fn from_state(py: Python<'_>, key: Py<PyString>, state: &Bound<'_, PyAny>)
                  -> PyResult<PeerGroup> {
        let parts = items_of(state)?;
        if parts.len() != 5 {
            return Err(PyValueError::new_err("a peer group of an unknown shape"));
        }
        let counts = items_of(&parts[1])?;
        let hod: Vec<i64> = parts[2].extract()?;
        if counts.len() != 4 || hod.len() != 24 {
            return Err(PyValueError::new_err("a peer group of an unknown shape"));
        }
        let mut g = PeerGroup::new(key);
        g.history = parts[0].extract()?;
        for (tally, saved) in g.counts.iter_mut().zip(counts.iter()) {
            *tally = Counts::load(py, saved.downcast::<PyDict>()?)?;
        }
        g.hod.copy_from_slice(&hod);
        g.members = Counts::load(py, parts[3].downcast::<PyDict>()?)?;
        g.policy_writes = parts[4].extract()?;
        Ok(g)
    }
}
