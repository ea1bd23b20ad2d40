//! Vault / OpenBao audit entries in compiled code: one line decoded into a [`VaultEntry`], and
//! the request and response entries of a call joined into one `AccessEvent` by [`VaultJoiner`].
//!
//! `pipeline/parsers/vault.py` keeps the rest:
//! - **Lines this decoder does not take.** It takes a line only where it reads it exactly as the
//!   msgspec decoder of `parse_entry` does: valid UTF-8, strict JSON with no duplicate field
//!   among those read, a `type` of request or response, a time of the form
//!   `YYYY-MM-DDTHH:MM:SS[.f]Z|±HH:MM`. Any other line is declined (`None`), and `parse_entry`
//!   decodes it in Python: an entry, or the `ParseError` with the same wording as ever.
//! - **Naming.** What a path names (secret, namespace, login), who a token is, an error's text, a
//!   failed login's account, a derived event id: Python functions, called once per distinct
//!   input (each is cached here, bounded), so the rules live in one place.
//!
//! `tests/test_native_vault.py` checks events, dead letters and counters against the Python
//! joiner this replaced, on real and generated lines.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyString, PyTuple};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::VecDeque;

// ---------------------------------------------------------------------------------------------
// Decoding one line: only the fields read, borrowed from the line where no escape is in them

#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// The user agent header: a string, or a list of strings (the first is taken).
struct Agent<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Agent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Agent<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Agent(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Agent(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Agent(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut first = None;
                // every item must be a string, as for the Python decoder's list[str]
                while let Some(Str(s)) = seq.next_element::<Str<'a>>()? {
                    first.get_or_insert(s);
                }
                Ok(Agent(first.unwrap_or(Cow::Borrowed(""))))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawNamespace<'a> {
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawHeaders<'a> {
    #[serde(borrow, rename = "user-agent")]
    user_agent: Option<Agent<'a>>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mount_point: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mount_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    remote_address: Option<Cow<'a, str>>,
    #[serde(borrow)]
    namespace: Option<RawNamespace<'a>>,
    #[serde(borrow)]
    headers: Option<RawHeaders<'a>>,
}

#[derive(Deserialize)]
struct RawMetadata<'a> {
    #[serde(borrow)]
    role_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service_account_namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service_account_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawAuth<'a> {
    #[serde(borrow)]
    entity_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    accessor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    display_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    policies: Option<Vec<Str<'a>>>,
    #[serde(borrow)]
    metadata: Option<RawMetadata<'a>>,
}

#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(borrow)]
    auth: Option<RawAuth<'a>>,
}

#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: RawRequest<'a>,
    #[serde(borrow)]
    auth: Option<RawAuth<'a>>,
    #[serde(borrow)]
    response: Option<RawResponse<'a>>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
}

/// POSIX seconds of `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`, as Python's
/// `datetime.fromisoformat(value).timestamp()` gives them: fractions truncated to microseconds,
/// microseconds divided by 10**6 once (exact while they fit 53 bits, about years 1685-2255;
/// None outside, and for anything Python might read differently).
pub fn timestamp(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + (c - b'0') as i64)
        })
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        let kept = digits.min(6);
        micros = num(start, start + kept)? * 10i64.pow((6 - kept) as u32);
    }
    let offset = match b.get(i) {
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    if year < 1 || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day < 1 || day > days_in[(month - 1) as usize] {
        return None;
    }
    // days from 1970-01-01 (Howard Hinnant's days_from_civil)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let total = seconds * 1_000_000 + micros;
    if total.unsigned_abs() > 1u64 << 53 {
        return None;
    }
    Some(total as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------------
// An entry: the fields read, each `[0]` (absent) or `[1][length, u32 LE][UTF-8]` in one buffer

const NONE: u8 = 0;
const SOME: u8 = 1;

// The request's fields, in this order: the first four are what a path names (one cache key).
const PATH: usize = 0;
const MOUNT_POINT: usize = 1;
const MOUNT_TYPE: usize = 2;
const NAMESPACE: usize = 3;
const ID: usize = 4;
const OPERATION: usize = 5;
const ADDRESS: usize = 6;
const AGENT: usize = 7;

/// Where an auth block's fields start; `start..end` is the block, the token cache's key.
#[derive(Clone, Copy)]
struct AuthAt {
    start: u32,
    end: u32,
}

// An auth block's fields, in this order after its start: entity id, accessor, display name,
// token type, then the policies `[0]` or `[1][count][length, bytes]...`, then the metadata's
// role name, service account namespace and name.
const ENTITY: usize = 0;
const ACCESSOR: usize = 1;
const DISPLAY: usize = 2;

struct Entry {
    text: Vec<u8>,
    request_fields: [u32; 9], // offsets of the 8 request fields, and the end of the first four
    auth: Option<AuthAt>,      // the entry's own auth block
    response_auth: Option<AuthAt>, // response.auth: a login's new token
    has_response: bool,
    error: u32,
    is_request: bool,
    ts: f64,
    place: Py<PyString>, // a file name with `lineno`, or the whole origin when lineno is 0
    lineno: u64,
}

struct Writer {
    text: Vec<u8>,
}

impl Writer {
    fn opt(&mut self, value: Option<&str>) -> u32 {
        let at = self.text.len() as u32;
        match value {
            None => self.text.push(NONE),
            Some(s) => {
                self.text.push(SOME);
                self.text.extend_from_slice(&(s.len() as u32).to_le_bytes());
                self.text.extend_from_slice(s.as_bytes());
            }
        }
        at
    }

    fn auth(&mut self, auth: Option<&RawAuth<'_>>) -> Option<AuthAt> {
        let auth = auth?;
        let start = self.text.len() as u32;
        self.opt(auth.entity_id.as_deref());
        self.opt(auth.accessor.as_deref());
        self.opt(auth.display_name.as_deref());
        self.opt(auth.token_type.as_deref());
        match &auth.policies {
            None => self.text.push(NONE),
            Some(list) => {
                self.text.push(SOME);
                self.text.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for Str(p) in list {
                    self.text.extend_from_slice(&(p.len() as u32).to_le_bytes());
                    self.text.extend_from_slice(p.as_bytes());
                }
            }
        }
        let meta = auth.metadata.as_ref();
        self.opt(meta.and_then(|m| m.role_name.as_deref()));
        self.opt(meta.and_then(|m| m.service_account_namespace.as_deref()));
        self.opt(meta.and_then(|m| m.service_account_name.as_deref()));
        Some(AuthAt { start, end: self.text.len() as u32 })
    }
}

/// The auth block's fields read back: 4 strings, the policies, 3 metadata strings.
struct AuthFields<'a> {
    strings: [Option<&'a str>; 4],
    policies: Option<Vec<&'a str>>,
    meta: [Option<&'a str>; 3],
}

fn u32_at(text: &[u8], at: usize) -> usize {
    u32::from_le_bytes([text[at], text[at + 1], text[at + 2], text[at + 3]]) as usize
}

/// The string at `at`, and where the next field starts.
fn read(text: &[u8], at: usize) -> (Option<&str>, usize) {
    if text[at] == NONE {
        return (None, at + 1);
    }
    let len = u32_at(text, at + 1);
    let start = at + 5;
    // SAFETY: every string was written from a &str
    (Some(unsafe { std::str::from_utf8_unchecked(&text[start..start + len]) }), start + len)
}

impl Entry {
    fn field(&self, at: u32) -> Option<&str> {
        read(&self.text, at as usize).0
    }

    fn request(&self, which: usize) -> Option<&str> {
        self.field(self.request_fields[which])
    }

    fn request_id(&self) -> &str {
        self.request(ID).unwrap_or("")
    }

    fn resource_key(&self) -> &[u8] {
        &self.text[self.request_fields[PATH] as usize..self.request_fields[8] as usize]
    }

    fn auth_fields(&self, at: AuthAt) -> AuthFields<'_> {
        let text = &self.text;
        let mut pos = at.start as usize;
        let mut strings = [None; 4];
        for s in strings.iter_mut() {
            let (v, next) = read(text, pos);
            *s = v;
            pos = next;
        }
        let policies = if text[pos] == NONE {
            pos += 1;
            None
        } else {
            let count = u32_at(text, pos + 1);
            pos += 5;
            let mut list = Vec::with_capacity(count);
            for _ in 0..count {
                let len = u32_at(text, pos);
                // SAFETY: written from a &str
                list.push(unsafe { std::str::from_utf8_unchecked(&text[pos + 4..pos + 4 + len]) });
                pos += 4 + len;
            }
            Some(list)
        };
        let mut meta = [None; 3];
        for s in meta.iter_mut() {
            let (v, next) = read(text, pos);
            *s = v;
            pos = next;
        }
        AuthFields { strings, policies, meta }
    }

    fn auth_string(&self, at: Option<AuthAt>, which: usize) -> Option<&str> {
        let at = at?;
        let mut pos = at.start as usize;
        for _ in 0..which {
            pos = read(&self.text, pos).1;
        }
        read(&self.text, pos).0
    }

    fn clone_ref(&self, py: Python<'_>) -> Entry {
        Entry {
            text: self.text.clone(),
            request_fields: self.request_fields,
            auth: self.auth,
            response_auth: self.response_auth,
            has_response: self.has_response,
            error: self.error,
            is_request: self.is_request,
            ts: self.ts,
            place: self.place.clone_ref(py),
            lineno: self.lineno,
        }
    }

    /// `where:lineno`, joined by Python: a file name may hold the surrogates that stand for
    /// bytes its file system name had that are not UTF-8.
    fn origin(&self, py: Python<'_>) -> PyResult<Py<PyString>> {
        if self.lineno == 0 {
            return Ok(self.place.clone_ref(py));
        }
        let line = PyString::new(py, &format!(":{}", self.lineno));
        Ok(self.place.bind(py).add(line)?.downcast_into::<PyString>()?.unbind())
    }

    /// The audit device's entry of itself when it is set up (`update sys/audit/test`, no token,
    /// no address): `vault._is_self_test`.
    fn is_self_test(&self) -> bool {
        self.request(PATH) == Some("sys/audit/test")
            && self.request(ADDRESS).is_none_or(str::is_empty)
            && [ACCESSOR, ENTITY, DISPLAY].iter().all(|&w| {
                self.auth_string(self.auth, w).is_none_or(str::is_empty)
            })
    }
}

const MAX_OPENINGS: usize = 256;

/// How many `[` and `{` the bytes hold (`c | 0x20` is `{` for those two alone), and whether
/// any is a backslash; counted in byte-wide lanes a chunk at a time, which the compiler
/// vectorises.
fn openings_and_escapes(b: &[u8]) -> (usize, bool) {
    let (mut open, mut escapes) = (0usize, false);
    for chunk in b.chunks(255) {
        let (o, e) = chunk.iter().fold((0u8, 0u8), |(o, e), &c| {
            (o + ((c | 0x20) == b'{') as u8, e | (c == b'\\') as u8)
        });
        open += o as usize;
        escapes |= e != 0;
    }
    (open, escapes)
}

/// Whether the text escapes a UTF-16 surrogate (`\uD800`-`\uDFFF`): the Python decoder checks
/// their pairing in every string, skipped ones included, where serde checks only the strings
/// it reads.
fn escapes_a_surrogate(b: &[u8]) -> bool {
    b.windows(3).any(|w| w[0] == b'\\' && w[1] == b'u' && (w[2] | 0x20) == b'd')
}

/// A line decoded, or None where the Python decoder must read it.
fn decode(raw: &[u8], place: Py<PyString>, lineno: u64) -> Option<Entry> {
    let start = raw.iter().position(|&c| c == b'{')?;
    let text = std::str::from_utf8(&raw[start..]).ok()?;
    // The Python decoder refuses nesting past Python's recursion limit, where serde skips any
    // depth: a line that could nest that deep is left to it (real lines open a few dozen).
    let (open, escapes) = openings_and_escapes(text.as_bytes());
    if open > MAX_OPENINGS || (escapes && escapes_a_surrogate(text.as_bytes())) {
        return None;
    }
    let line: RawLine<'_> = serde_json::from_str(text).ok()?;
    let is_request = match &*line.kind {
        "request" => true,
        "response" => false,
        _ => return None,
    };
    let ts = timestamp(&line.time)?;
    let req = &line.request;
    let mut w = Writer { text: Vec::with_capacity(256) };
    let mut fields = [0u32; 9];
    fields[PATH] = w.opt(req.path.as_deref());
    fields[MOUNT_POINT] = w.opt(req.mount_point.as_deref());
    fields[MOUNT_TYPE] = w.opt(req.mount_type.as_deref());
    fields[NAMESPACE] = w.opt(req.namespace.as_ref().and_then(|n| n.path.as_deref()));
    fields[8] = w.text.len() as u32;
    fields[ID] = w.opt(req.id.as_deref());
    fields[OPERATION] = w.opt(req.operation.as_deref());
    fields[ADDRESS] = w.opt(req.remote_address.as_deref());
    let agent = req.headers.as_ref().and_then(|h| h.user_agent.as_ref()).map(|a| &*a.0);
    fields[AGENT] = w.opt(agent);
    let auth = w.auth(line.auth.as_ref());
    let response_auth = w.auth(line.response.as_ref().and_then(|r| r.auth.as_ref()));
    let error = w.opt(line.error.as_deref());
    Some(Entry {
        text: w.text,
        request_fields: fields,
        auth,
        response_auth,
        has_response: line.response.is_some(),
        error,
        is_request,
        ts,
        place,
        lineno,
    })
}

/// One audit entry (a request or response half), as `parse_entry` returns it.
#[pyclass(module = "secretscope._native", frozen)]
pub struct VaultEntry {
    entry: Entry,
}

type AuthTuple = (Option<String>, Option<String>, Option<String>, Option<String>,
                  Option<Vec<String>>, Option<String>, Option<String>, Option<String>);

#[pymethods]
impl VaultEntry {
    /// An entry from fields the Python decoder read: `request` is (path, mount point, mount
    /// type, namespace path, id, operation, remote address, user agent), each auth block
    /// (entity id, accessor, display name, token type, policies, role name, service account
    /// namespace, service account name).
    #[new]
    #[pyo3(signature = (kind, ts, request, auth, response, response_auth, error, place, lineno=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(kind: &str, ts: f64, request: [Option<String>; 8], auth: Option<AuthTuple>,
           response: bool, response_auth: Option<AuthTuple>, error: Option<&str>,
           place: Py<PyString>, lineno: u64) -> PyResult<Self> {
        let is_request = match kind {
            "request" => true,
            "response" => false,
            _ => return Err(PyValueError::new_err("kind is request or response")),
        };
        let mut w = Writer { text: Vec::new() };
        let mut fields = [0u32; 9];
        for (i, v) in request.iter().enumerate().take(4) {
            fields[i] = w.opt(v.as_deref());
        }
        fields[8] = w.text.len() as u32;
        for (i, v) in request.iter().enumerate().skip(4) {
            fields[i] = w.opt(v.as_deref());
        }
        let to_raw = |a: AuthTuple| {
            let (entity_id, accessor, display_name, token_type, policies, role, ns, name) = a;
            let cow = |v: Option<String>| v.map(Cow::Owned);
            RawAuth {
                entity_id: cow(entity_id), accessor: cow(accessor),
                display_name: cow(display_name), token_type: cow(token_type),
                policies: policies.map(|p| p.into_iter().map(|s| Str(Cow::Owned(s))).collect()),
                metadata: Some(RawMetadata { role_name: cow(role),
                                             service_account_namespace: cow(ns),
                                             service_account_name: cow(name) }),
            }
        };
        let auth = w.auth(auth.map(to_raw).as_ref());
        let response_auth = w.auth(response_auth.map(to_raw).as_ref());
        let error = w.opt(error);
        Ok(VaultEntry { entry: Entry { text: w.text, request_fields: fields, auth, response_auth,
                                       has_response: response, error, is_request, ts, place,
                                       lineno } })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        if self.entry.is_request { "request" } else { "response" }
    }
    #[getter]
    fn ts(&self) -> f64 {
        self.entry.ts
    }
    #[getter]
    fn request_id(&self) -> &str {
        self.entry.request_id()
    }
    #[getter]
    fn path(&self) -> Option<&str> {
        self.entry.request(PATH)
    }
    #[getter]
    fn lineno(&self) -> u64 {
        self.entry.lineno
    }
    /// "file:line", or where the entry came from as its source named it.
    #[getter]
    fn origin(&self, py: Python<'_>) -> PyResult<Py<PyString>> {
        self.entry.origin(py)
    }
}

/// A line decoded in compiled code, or None where `parse_entry` must decode it in Python.
#[pyfunction]
#[pyo3(signature = (raw, place, lineno=0))]
pub fn decode_vault(raw: &[u8], place: Py<PyString>, lineno: u64) -> Option<VaultEntry> {
    decode(raw, place, lineno).map(|entry| VaultEntry { entry })
}

// ---------------------------------------------------------------------------------------------
// Naming, by the Python functions of parsers/vault.py (once per distinct input)

struct Hooks {
    event: PyObject,         // AccessEvent
    resource: PyObject,      // (path, mount point, mount type, ns path) -> (is login, secret, namespace)
    token: PyObject,         // auth fields -> (identity, display, policies, token type)
    error: PyObject,         // error text -> its first item, cut
    login_attempt: PyObject, // (path, remote address) -> (identity, display, (), "")
    derived_id: PyObject,    // (kind, ts, operation, path, accessor, address) -> id
    bare_address: PyObject,  // remote address as logged -> without brackets or port
    truncate: PyObject,      // (values, max chars) -> (values cut, names of those cut)
    cut_policies: PyObject,  // (policies, max chars) -> policies cut
    strings: Vec<Py<PyString>>, // the constant strings below, by index
}

const SOURCE: usize = 0;
const SUCCESS: usize = 1;
const DENIED: usize = 2;
const FAILED: usize = 3;
const LOGIN_NO_TOKEN: usize = 4;
const BOTH: usize = 5;
const REQUEST: usize = 6;
const RESPONSE: usize = 7;
const EMPTY: usize = 8;
const TOKEN: usize = 9;
const CONSTANTS: [&str; 10] = ["vault", "success", "denied", "failed", "login issued no token",
                                "request+response", "request", "response", "", "token"];

static HOOKS: GILOnceCell<Hooks> = GILOnceCell::new();

/// Give the joiner the Python functions and constants it names events with (once, from
/// `secretscope.parsers.vault`); the constants must be the strings in `CONSTANTS`' order.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn set_vault_hooks(py: Python<'_>, event: PyObject, resource: PyObject, token: PyObject,
                       error: PyObject, login_attempt: PyObject, derived_id: PyObject,
                       bare_address: PyObject, truncate: PyObject, cut_policies: PyObject,
                       constants: Vec<Py<PyString>>) -> PyResult<()> {
    let ok = constants.len() == CONSTANTS.len()
        && constants.iter().zip(CONSTANTS).all(|(s, c)| s.bind(py).to_cow().is_ok_and(|s| s == c));
    if !ok {
        return Err(PyValueError::new_err(format!("constants must be {CONSTANTS:?}")));
    }
    let hooks = Hooks { event, resource, token, error, login_attempt, derived_id, bare_address,
                        truncate, cut_policies, strings: constants };
    // a second call (a reload of the module) keeps the first functions
    let _ = HOOKS.set(py, hooks);
    Ok(())
}

fn hooks(py: Python<'_>) -> PyResult<&Hooks> {
    HOOKS.get(py).ok_or_else(|| PyValueError::new_err("secretscope.parsers.vault is not loaded"))
}

const MAX_CACHED: usize = 1 << 14; // entries per cache, as the Python caches: cleared when full

/// Strings made once and shared by the events that repeat them.
#[derive(Default)]
struct Interned {
    map: FxHashMap<Box<str>, Py<PyString>>,
}

impl Interned {
    fn get(&mut self, py: Python<'_>, s: &str) -> Py<PyString> {
        if let Some(v) = self.map.get(s) {
            return v.clone_ref(py);
        }
        if self.map.len() >= MAX_CACHED {
            self.map.clear();
        }
        let v = PyString::new(py, s).unbind();
        self.map.insert(s.into(), v.clone_ref(py));
        v
    }
}

/// What a token's auth block names (`vault._token`), and its policies cut if they must be.
struct Named {
    identity: Py<PyString>,
    display: Py<PyString>,
    policies: Py<PyTuple>,
    token_type: Py<PyString>,
    named: bool,          // identity is not ""
    cut: Option<Py<PyTuple>>, // policies past 64 or longer than max_field_chars, cut
}

impl Named {
    fn clone_ref(&self, py: Python<'_>) -> Named {
        Named { identity: self.identity.clone_ref(py), display: self.display.clone_ref(py),
                policies: self.policies.clone_ref(py), token_type: self.token_type.clone_ref(py),
                named: self.named, cut: self.cut.as_ref().map(|c| c.clone_ref(py)) }
    }
}

/// What a path names (`vault._resource`): is it a login, the secret, the namespace.
type Resource = (bool, Py<PyString>, Py<PyString>);

struct Caches {
    strings: Interned,
    resources: FxHashMap<Box<[u8]>, Resource>,
    tokens: FxHashMap<Box<[u8]>, Named>,
    addresses: FxHashMap<Box<str>, Py<PyString>>,
    errors: FxHashMap<Box<str>, Py<PyString>>,
    methods: FxHashMap<Box<str>, Py<PyString>>,
}

fn bounded<K, V>(map: &mut FxHashMap<K, V>) {
    if map.len() >= MAX_CACHED {
        map.clear();
    }
}

const KNOWN_METHODS: [&str; 15] = ["approle", "kubernetes", "oidc", "jwt", "userpass", "ldap",
                                   "okta", "github", "aws", "gcp", "azure", "cert", "radius",
                                   "token", "root"];

fn chars_over(s: &Bound<'_, PyString>, max: usize) -> PyResult<bool> {
    Ok(s.len()? > max)
}

impl Caches {
    fn new() -> Self {
        Caches { strings: Interned::default(), resources: FxHashMap::default(),
                 tokens: FxHashMap::default(), addresses: FxHashMap::default(),
                 errors: FxHashMap::default(), methods: FxHashMap::default() }
    }

    fn resource(&mut self, py: Python<'_>, h: &Hooks, e: &Entry) -> PyResult<Resource> {
        let key = e.resource_key();
        if let Some((login, secret, ns)) = self.resources.get(key) {
            return Ok((*login, secret.clone_ref(py), ns.clone_ref(py)));
        }
        let args = (e.request(PATH).unwrap_or(""), e.request(MOUNT_POINT), e.request(MOUNT_TYPE),
                    e.request(NAMESPACE));
        let (login, secret, ns): (bool, Py<PyString>, Py<PyString>) =
            h.resource.call1(py, (args,))?.extract(py)?;
        bounded(&mut self.resources);
        self.resources.insert(key.into(), (login, secret.clone_ref(py), ns.clone_ref(py)));
        Ok((login, secret, ns))
    }

    fn token(&mut self, py: Python<'_>, h: &Hooks, e: &Entry, at: Option<AuthAt>, max: usize)
             -> PyResult<Named> {
        let key: &[u8] = match at {
            Some(a) => &e.text[a.start as usize..a.end as usize],
            None => &[],
        };
        if let Some(named) = self.tokens.get(key) {
            return Ok(named.clone_ref(py));
        }
        let args = match at {
            None => (None, None, None, None, None, None, None, None),
            Some(a) => {
                let f = e.auth_fields(a);
                let policies = f.policies.map(|p| PyTuple::new(py, p)).transpose()?;
                (f.strings[0], f.strings[1], f.strings[2], f.strings[3], policies, f.meta[0],
                 f.meta[1], f.meta[2])
            }
        };
        let (identity, display, policies, token_type): (Py<PyString>, Py<PyString>, Py<PyTuple>,
                                                        Py<PyString>) =
            h.token.call1(py, args)?.extract(py)?;
        let named = !identity.bind(py).is_empty()?;
        let pol = policies.bind(py);
        let mut over = pol.len() > 64;
        for p in pol.iter() {
            over = over || chars_over(p.downcast::<PyString>()?, max)?;
        }
        let cut = if pol.len() > 0 && over {
            Some(h.cut_policies.call1(py, (pol, max))?.extract::<Py<PyTuple>>(py)?)
        } else {
            None
        };
        let value = Named { identity, display, policies, token_type, named, cut };
        bounded(&mut self.tokens);
        self.tokens.insert(key.into(), value.clone_ref(py));
        Ok(value)
    }

    fn address(&mut self, py: Python<'_>, h: &Hooks, value: &str) -> PyResult<Py<PyString>> {
        if let Some(v) = self.addresses.get(value) {
            return Ok(v.clone_ref(py));
        }
        let bare: Py<PyString> = h.bare_address.call1(py, (value,))?.extract(py)?;
        bounded(&mut self.addresses);
        self.addresses.insert(value.into(), bare.clone_ref(py));
        Ok(bare)
    }

    fn error(&mut self, py: Python<'_>, h: &Hooks, value: Option<&str>) -> PyResult<Py<PyString>> {
        let value = match value {
            None | Some("") => return Ok(h.strings[EMPTY].clone_ref(py)),
            Some(v) => v,
        };
        if let Some(v) = self.errors.get(value) {
            return Ok(v.clone_ref(py));
        }
        let text: Py<PyString> = h.error.call1(py, (value,))?.extract(py)?;
        bounded(&mut self.errors);
        self.errors.insert(value.into(), text.clone_ref(py));
        Ok(text)
    }

    /// `vault._auth_method` of a call that is not a login: the display name's first word if it
    /// names a method, else "token".
    fn method(&mut self, py: Python<'_>, h: &Hooks, display: &Bound<'_, PyString>)
              -> PyResult<Py<PyString>> {
        let display = display.to_cow()?;
        if let Some(v) = self.methods.get(&*display) {
            return Ok(v.clone_ref(py));
        }
        let head = display.split('-').next().unwrap_or("");
        let method = if KNOWN_METHODS.contains(&head) {
            PyString::new(py, head).unbind()
        } else {
            h.strings[TOKEN].clone_ref(py)
        };
        bounded(&mut self.methods);
        self.methods.insert((*display).into(), method.clone_ref(py));
        Ok(method)
    }
}

/// Python's `s[:n]` of a str: the first `n` code points.
fn first_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Joining

struct Call {
    request: Option<Entry>,
    response: Option<Entry>,
    done: bool,
    first_ts: f64,
    anonymous: bool, // no request id to join on: a call of its own
}

impl Call {
    fn first(&self) -> &Entry {
        self.request.as_ref().or(self.response.as_ref()).expect("a call has an entry")
    }
}

/// Joins request and response entries into events, in the order the calls arrived, as
/// `vault.VaultJoiner` documents: a call is released when its response arrives, or
/// `join_timeout` seconds of event time after its request; copies of released ids (from other
/// audit devices) are dropped, remembered for two generations of `remember_seconds` of event
/// time (each at least `min_remembered` ids); audit devices' self-test entries are dropped.
#[pyclass(module = "secretscope._native")]
pub struct VaultJoiner {
    #[pyo3(get)]
    join_timeout: f64,
    #[pyo3(get)]
    max_field_chars: usize,
    #[pyo3(get)]
    max_pending: usize,
    #[pyo3(get)]
    remember_seconds: f64,
    #[pyo3(get)]
    min_remembered: usize,
    #[pyo3(get)]
    duplicates: u64,
    #[pyo3(get)]
    self_tests: u64,
    #[pyo3(get)]
    latest_ts: f64,
    pending: FxHashMap<Box<str>, u64>, // request id -> sequence number of its call
    order: VecDeque<Call>,             // waiting calls in arrival order
    first_seq: u64,                    // sequence number of order[0]
    released: FxHashSet<Box<str>>,
    released_before: FxHashSet<Box<str>>,
    generation_start: f64,
    caches: Caches,
}

#[pymethods]
impl VaultJoiner {
    #[new]
    #[pyo3(signature = (join_timeout=30.0, max_field_chars=1024, max_pending=100_000,
                        remember_seconds=120.0, min_remembered=4096))]
    fn new(join_timeout: f64, max_field_chars: usize, max_pending: usize, remember_seconds: f64,
           min_remembered: usize) -> Self {
        VaultJoiner {
            join_timeout, max_field_chars, max_pending, remember_seconds, min_remembered,
            duplicates: 0, self_tests: 0, latest_ts: f64::NEG_INFINITY,
            pending: FxHashMap::default(), order: VecDeque::new(), first_seq: 0,
            released: FxHashSet::default(), released_before: FxHashSet::default(),
            generation_start: f64::NEG_INFINITY, caches: Caches::new(),
        }
    }

    /// Join one entry; the events it completes (or expires), oldest first.
    fn feed(&mut self, py: Python<'_>, entry: &VaultEntry) -> PyResult<Vec<PyObject>> {
        let mut out = Vec::new();
        self.add(py, entry.entry.clone_ref(py), &mut out)?;
        Ok(out)
    }

    /// Decode and join one line in one call; None where the line is not one the compiled
    /// decoder takes, or is longer than `max_bytes`, or is timed more than `max_ahead` seconds
    /// after `now` (the caller decodes it in Python, which says why).
    #[pyo3(signature = (raw, place, lineno=0, max_bytes=usize::MAX, now=f64::NEG_INFINITY,
                        max_ahead=f64::INFINITY))]
    #[allow(clippy::too_many_arguments)]
    fn feed_line(&mut self, py: Python<'_>, raw: &[u8], place: &Bound<'_, PyString>, lineno: u64,
                 max_bytes: usize, now: f64, max_ahead: f64) -> PyResult<Option<Vec<PyObject>>> {
        if raw.len() > max_bytes {
            return Ok(None);
        }
        match decode(raw, place.clone().unbind(), lineno) {
            // the Python check's own words (`Decoder._check_not_ahead`): refused if ahead > max
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            Some(entry) if !(entry.ts - now > max_ahead) => {
                let mut out = Vec::new();
                self.add(py, entry, &mut out)?;
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }

    /// Decode and join the lines of `data` from byte `pos` on, each ended by a newline, the
    /// first numbered `lineno + 1`: (the events completed, where the first line not taken
    /// starts, how many lines were taken, whether that line was declined). A line not taken is
    /// one this decoder declines (the caller reads it, up to its newline, with `parse_entry`)
    /// or one whose newline is not in `data` yet.
    #[pyo3(signature = (data, pos, place, lineno, max_bytes=usize::MAX))]
    fn feed_chunk(&mut self, py: Python<'_>, data: &[u8], pos: usize, place: &Bound<'_, PyString>,
                  lineno: u64, max_bytes: usize) -> PyResult<(Vec<PyObject>, usize, u64, bool)> {
        let mut out = Vec::new();
        let (mut at, mut taken) = (pos.min(data.len()), 0u64);
        while let Some(newline) = memchr::memchr(b'\n', &data[at..]) {
            let end = at + newline + 1;
            let raw = &data[at..end];
            if raw.len() > max_bytes {
                return Ok((out, at, taken, true));
            }
            match decode(raw, place.clone().unbind(), lineno + taken + 1) {
                Some(entry) => self.add(py, entry, &mut out)?,
                None => return Ok((out, at, taken, true)),
            }
            taken += 1;
            at = end;
        }
        Ok((out, at, taken, false))
    }

    /// Release the oldest waiting call without its other half, then the completed calls queued
    /// behind it (live sources, when the wait has lasted too long in wall time).
    fn release_oldest(&mut self, py: Python<'_>) -> PyResult<Vec<PyObject>> {
        let Some(call) = self.pop() else { return Ok(Vec::new()) };
        let mut out = vec![self.release(py, call)?];
        let latest = self.latest_ts;
        self.expire(py, latest, &mut out)?;
        Ok(out)
    }

    /// Release every waiting call (end of input).
    fn flush(&mut self, py: Python<'_>) -> PyResult<Vec<PyObject>> {
        let mut out = Vec::with_capacity(self.order.len());
        while let Some(call) = self.pop() {
            out.push(self.release(py, call)?);
        }
        Ok(out)
    }

    /// The earliest entry still waiting for its other half.
    fn oldest_pending(&self, py: Python<'_>) -> Option<VaultEntry> {
        self.order.front().map(|c| VaultEntry { entry: c.first().clone_ref(py) })
    }

    /// How many released request ids are remembered for dropping copies.
    fn remembered(&self) -> usize {
        self.released.len() + self.released_before.len()
    }
}

impl VaultJoiner {
    fn add(&mut self, py: Python<'_>, entry: Entry, out: &mut Vec<PyObject>) -> PyResult<()> {
        let ts = entry.ts;
        if ts > self.latest_ts {
            self.latest_ts = ts;
            if ts - self.generation_start >= self.remember_seconds
                && self.released.len() >= self.min_remembered
            {
                self.released_before = std::mem::take(&mut self.released);
                self.generation_start = ts;
            }
        }
        if entry.request(PATH) == Some("sys/audit/test") && entry.is_self_test() {
            self.self_tests += 1;
        } else if entry.request_id().is_empty() {
            self.order.push_back(Call { first_ts: ts, done: true, anonymous: true,
                                        request: None, response: None });
            let call = self.order.back_mut().expect("pushed");
            if entry.is_request { call.request = Some(entry) } else { call.response = Some(entry) }
        } else if self.released.contains(entry.request_id())
            || self.released_before.contains(entry.request_id())
        {
            self.duplicates += 1;
        } else {
            let seq = match self.pending.get(entry.request_id()) {
                Some(&seq) => seq,
                None => {
                    let seq = self.first_seq + self.order.len() as u64;
                    self.pending.insert(entry.request_id().into(), seq);
                    self.order.push_back(Call { first_ts: ts, done: false, anonymous: false,
                                                request: None, response: None });
                    seq
                }
            };
            let call = &mut self.order[(seq - self.first_seq) as usize];
            if entry.is_request {
                if call.request.is_some() {
                    self.duplicates += 1;
                } else {
                    call.request = Some(entry);
                }
                call.done = call.response.is_some();
            } else {
                if call.response.is_some() {
                    self.duplicates += 1;
                } else {
                    call.response = Some(entry);
                }
                call.done = true;
            }
        }
        self.expire(py, ts, out)
    }

    fn pop(&mut self) -> Option<Call> {
        let call = self.order.pop_front()?;
        self.first_seq += 1;
        if !call.anonymous {
            if let Some((key, _)) = self.pending.remove_entry(call.first().request_id()) {
                self.released.insert(key);
            }
        }
        Some(call)
    }

    fn expire(&mut self, py: Python<'_>, now: f64, out: &mut Vec<PyObject>) -> PyResult<()> {
        let deadline = now - self.join_timeout;
        while let Some(call) = self.order.front() {
            if !(call.done || call.first_ts < deadline || self.order.len() > self.max_pending) {
                break;
            }
            let call = self.pop().expect("a front");
            out.push(self.release(py, call)?);
        }
        Ok(())
    }

    /// The call's event: `vault.build_event` of its halves.
    fn release(&mut self, py: Python<'_>, call: Call) -> PyResult<PyObject> {
        let h = hooks(py)?;
        let max = self.max_field_chars;
        let c = &mut self.caches;
        let first = call.first();
        let last = call.response.as_ref().unwrap_or(first);
        let response = call.response.as_ref();
        let (is_login, secret, namespace) = c.resource(py, h, first)?;
        // who made the call: vault._identity
        let named = if is_login {
            match response.and_then(|r| r.response_auth.map(|a| (r, a))) {
                Some((r, a)) => Some(c.token(py, h, r, Some(a), max)?),
                None => None,
            }
        } else {
            let (e, at) = match (first.auth, response.and_then(|r| r.auth)) {
                (Some(a), _) => (first, Some(a)),
                (None, Some(a)) => (response.expect("its auth"), Some(a)),
                (None, None) => (first, None),
            };
            Some(c.token(py, h, e, at, max)?)
        };
        let mut policies_cut = false;
        let (identity, display, policies, token_type) = match named {
            Some(n) if n.named => {
                policies_cut = n.cut.is_some();
                let policies = n.cut.map_or(n.policies.into_any(), |p| p.into_any());
                (n.identity.into_any(), n.display.into_any(), policies, n.token_type.into_any())
            }
            Some(n) => {
                let address = c.address(py, h, first.request(ADDRESS).unwrap_or(""))?;
                let address = address.bind(py).to_cow()?.into_owned();
                let known = if address.is_empty() { "unknown" } else { &address };
                (PyString::new(py, &format!("anonymous:{known}")).into_any().unbind(),
                 h.strings[EMPTY].clone_ref(py).into_any(), PyTuple::empty(py).into_any().unbind(),
                 n.token_type.into_any())
            }
            None => {
                // a failed or request-only login: the account tried (vault._login_attempt)
                let t = h.login_attempt.call1(
                    py, (first.request(PATH).unwrap_or(""), first.request(ADDRESS).unwrap_or("")))?;
                let t = t.downcast_bound::<PyTuple>(py)?;
                (t.get_item(0)?.unbind(), t.get_item(1)?.unbind(), t.get_item(2)?.unbind(),
                 t.get_item(3)?.unbind())
            }
        };
        let mut error = c.error(py, h, last.field(last.error))?;
        if is_login && error.bind(py).is_empty()? {
            // OpenBao logs some refused logins with the error only in response.data, never
            // read: a login that issued no token did not succeed
            if let Some(r) = response {
                if !r.has_response || r.response_auth.is_none() {
                    error = h.strings[LOGIN_NO_TOKEN].clone_ref(py);
                }
            }
        }
        let event_id = match first.request_id() {
            "" => {
                let accessor = first.auth_string(first.auth, ACCESSOR).unwrap_or("");
                let kind = if first.is_request { "request" } else { "response" };
                h.derived_id.call1(py, (kind, first.ts, first.request(OPERATION).unwrap_or(""),
                                        first.request(PATH).unwrap_or(""), accessor,
                                        first.request(ADDRESS).unwrap_or("")))?
            }
            id => PyString::new(py, id).into_any().unbind(),
        };
        let operation = c.strings.get(py, first.request(OPERATION).unwrap_or(""));
        let path = c.strings.get(py, first.request(PATH).unwrap_or(""));
        let mount_type = c.strings.get(py, first.request(MOUNT_TYPE).unwrap_or(""));
        let address = c.address(py, h, first.request(ADDRESS).unwrap_or(""))?;
        let agent = c.strings.get(py, first_chars(first.request(AGENT).unwrap_or(""), 256));
        let mut values = [event_id, identity, display, operation.into_any(), path.into_any(),
                          secret.into_any(), namespace.into_any(), mount_type.into_any(),
                          address.into_any()];
        let mut over = policies_cut;
        for v in values.iter() {
            over = over || v.bind(py).downcast::<PyString>()?.len()? > max;
        }
        let mut truncated = PyTuple::empty(py).into_any().unbind();
        if over {
            let (cut, names): (Vec<PyObject>, PyObject) = h.truncate.call1(
                py, (PyTuple::new(py, values.iter())?, max, policies_cut))?.extract(py)?;
            for (v, c) in values.iter_mut().zip(cut) {
                *v = c;
            }
            truncated = names;
        }
        let outcome = {
            let text = error.bind(py).to_cow()?;
            if text.is_empty() {
                SUCCESS
            } else if text.contains("permission denied") {
                DENIED
            } else {
                FAILED
            }
        };
        let method = if is_login {
            match first.request(MOUNT_TYPE) {
                Some(m) if !m.is_empty() => c.strings.get(py, m),
                _ => {
                    // the path as the event keeps it, cut or not
                    let path = values[4].bind(py).downcast::<PyString>()?.to_cow()?;
                    c.strings.get(py, path.split('/').nth(1).unwrap_or(""))
                }
            }
        } else {
            let display = values[2].bind(py).downcast::<PyString>()?.clone();
            c.method(py, h, &display)?
        };
        let phases = match (&call.request, &call.response) {
            (Some(_), Some(_)) => BOTH,
            (Some(_), None) => REQUEST,
            _ => RESPONSE,
        };
        let [event_id, identity, display, operation, path, secret, namespace, mount_type, address] =
            values;
        let args = PyTuple::new(py, [
            h.strings[SOURCE].clone_ref(py).into_any(), event_id,
            first.ts.into_pyobject(py)?.into_any().unbind(), identity, display, policies,
            operation, path, secret, namespace, mount_type, address, agent.into_any(),
            h.strings[outcome].clone_ref(py).into_any(), error.into_any(),
            PyBool::new(py, is_login).to_owned().into_any().unbind(), method.into_any(),
            token_type, h.strings[phases].clone_ref(py).into_any(), first.origin(py)?.into_any(),
            truncated,
        ])?;
        h.event.call1(py, args)
    }
}
