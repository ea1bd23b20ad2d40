"""Building the calls identities make: reads, lists, writes, logins, admin calls."""

from __future__ import annotations

import random

from secretscope.simulate.world import (ANON, Actor, Call, DB_LEASE_SECONDS, DENIED, INVALID, LOGIN,
                                     Mount, NS, OK, Secret, Session, TEAMS, TOKEN, World, _digest)


def _call(s: Session, t: int, rng: random.Random, op: str, path: str, mount: Mount,
          outcome: str = OK, data: dict | None = None, response: bytes | None = None,
          kind: str = TOKEN) -> Call:
    return Call(t, kind, s.actor, s.issued, op, path, mount, s.addr, rng.randint(32768, 60999),
                s.ua, outcome, data, response)


def kv_read(w: World, s: Session, t: int, rng: random.Random, secret: Secret,
            force: bool = False) -> Call:
    """``force`` makes the read succeed whatever the ACL says (e.g. right after a policy edit)."""
    ok = force or s.actor.may(secret.team)
    return _call(s, t, rng, "read", secret.path, w.kv, OK if ok else DENIED,
                 response=secret.response)


def kv_read_metadata(w: World, s: Session, t: int, rng: random.Random, secret: Secret) -> Call:
    path = secret.path.replace("secret/data/", "secret/metadata/", 1)
    data = {"current_version": 1, "created_time": w.hmac("created", path),
            "updated_time": w.hmac("updated", path), "versions": {}}
    return _call(s, t, rng, "read", path, w.kv, OK if s.actor.may(secret.team) else DENIED,
                 response=w.kv.response(data=data))


def kv_list(w: World, s: Session, t: int, rng: random.Random, team: str | None) -> Call:
    """List one team's folder, or the mount root (team None), which only SREs may do."""
    if team is None:
        keys, path, ok = [f"{x}/" for x in TEAMS], "secret/metadata/", "*" in s.actor.readable
    else:
        keys = [x.name for x in w.teams[team]]
        path, ok = f"secret/metadata/{team}/", s.actor.may(team)
    data = {"keys": [w.hmac("key", k) for k in keys]}
    return _call(s, t, rng, "list", path, w.kv, OK if ok else DENIED,
                 response=w.kv.response(data=data))


def kv_write(w: World, s: Session, t: int, rng: random.Random, secret: Secret, op: str) -> Call:
    nonce = rng.getrandbits(64)
    data = {"data": {f: w.hmac("new-value", secret.path, f, nonce) for f in secret.fields},
            "options": {"cas": 0}}
    meta = {"created_time": w.hmac("created", secret.path, nonce), "custom_metadata": None,
            "deletion_time": w.hmac(""), "destroyed": False, "version": 1}
    return _call(s, t, rng, op, secret.path, w.kv, OK if s.actor.may(secret.team) else DENIED,
                 data=data, response=w.kv.response(data=meta))


def db_creds(w: World, s: Session, t: int, rng: random.Random, team: str,
             force: bool = False) -> Call:
    """Read of dynamic database credentials for ``<team>-app``: a new lease and a new user each
    time. Vault's audit device keeps ``secret.lease_id`` in clear (it is no credential); the
    lease length is added beside it so a replay can tell how long the credentials live."""
    role = f"{team}-app"
    lease = f"database/creds/{role}/{_digest(w.seed, 'lease', s.actor.key, t)[:24]}"
    data = {"username": w.hmac("db-user", lease), "password": w.hmac("db-password", lease)}
    response = w.database.response(data=data, secret={
        "lease_id": lease, "lease_duration": DB_LEASE_SECONDS, "renewable": True})
    ok = force or s.actor.may(team)
    return _call(s, t, rng, "read", f"database/creds/{role}", w.database, OK if ok else DENIED,
                 response=response)


def sys_call(w: World, s: Session, t: int, rng: random.Random, op: str, path: str,
             data: dict | None = None, response: dict | None = None) -> Call:
    """Administrative call; the simulator lets it succeed (the identities involved are admins
    or attackers who already hold enough rights)."""
    return _call(s, t, rng, op, path, w.sys, data=data,
                 response=w.sys.response(data=response) if response is not None else None)


def policy_write(w: World, s: Session, t: int, rng: random.Random, name: str) -> Call:
    return sys_call(w, s, t, rng, "update", f"sys/policies/acl/{name}",
                    data={"policy": w.hmac("policy", name, rng.getrandbits(64))})


def login(w: World, actor: Actor, t: int, rng: random.Random, addr: str, ua: str | None,
          ok: bool = True) -> list[Call]:
    """The calls of one login through the actor's auth method; the last one carries the new
    identity in ``response.auth`` (or fails with invalid credentials)."""
    method = actor.mount.type
    s = Session(actor, t, addr, ua)
    nonce = rng.getrandbits(64)
    if method == "oidc":
        start = _call(s, t, rng, "update", "auth/oidc/oidc/auth_url", actor.mount, kind=ANON,
                      data={"redirect_uri": w.hmac("redirect"), "role": w.hmac("role", "default")},
                      response=actor.mount.response(data={"auth_url": w.hmac("url", nonce)}))
        t += int(rng.uniform(4, 40) * NS)
        s = s._replace(issued=t)
        return [start, _login_call(w, s, t, rng, "read", "auth/oidc/oidc/callback",
                                   {"code": w.hmac("code", nonce), "state": w.hmac("state", nonce)},
                                   ok)]
    if method == "userpass":
        user = actor.metadata["username"] if actor.metadata else ""
        secret = "password" if ok else ("guess", nonce)
        return [_login_call(w, s, t, rng, "update", f"auth/userpass/login/{user}",
                            {"password": w.hmac("password", user, secret)}, ok)]
    if method == "approle":
        data = {"role_id": w.hmac("role_id", actor.key), "secret_id": w.hmac("secret_id", nonce)}
        return [_login_call(w, s, t, rng, "update", "auth/approle/login", data, ok)]
    data = {"jwt": w.hmac("jwt", actor.key, nonce), "role": w.hmac("role", actor.key)}
    return [_login_call(w, s, t, rng, "update", f"auth/{method}/login", data, ok)]


def _login_call(w: World, s: Session, t: int, rng: random.Random, op: str, path: str,
                data: dict, ok: bool) -> Call:
    mount = s.actor.mount
    response = mount.response(auth=w.auth_dict(s.actor, t, None)) if ok else None
    return _call(s, t, rng, op, path, mount, OK if ok else INVALID, data=data, response=response,
                 kind=LOGIN)
