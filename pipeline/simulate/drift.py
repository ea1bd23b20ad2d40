"""The drift world: a harder fleet whose normal behaviour changes during the log.

The default world is stationary: every identity does the same kind of thing every day, and
deploys are announced. Real fleets drift, and a detector that learned "normal" in week one
meets a different normal in week two. This world adds, on top of the default behaviours:

* staging copies of services (namespace ``<team>-staging``) that redeploy after every CI
  pipeline of their team, with new pod addresses each time, and no deploy is announced;
* autoscaling: extra pods of busy services log in from new addresses at peak hours;
* an unannounced migration week: the ``platform-kv-migration`` AppRole reads every team's
  secrets once and writes them to the ``kv-v2/`` mount;
* reorganisations: two services move to another team (new namespace, entity, policy and
  secret paths), two engineers change team (new policies), three services start mid-log;
* humans whose VPN address changes per connection, who work from home some days (a public
  address from their ISP, same user agent), one engineer back from nine days away working
  from home, SREs on call at weekends, a public holiday;
* SRE administrators editing policies as part of their job, and a new audit device enabled;
* partner teams: engineers read a few shared secrets of one other team, and deploy pipelines
  read one production credential (migrations), so a cross-team or production read alone is
  no proof of an attack.

Attacks: the ten default classes plus the shapes a stationary world cannot show (see
``drift_attacks``). Deterministic per seed like the default world; the default world's output
does not change when this one does, because every draw here comes from its own ``rand`` tag.
"""

from __future__ import annotations

from dataclasses import replace

from secretscope.simulate.world import (ALWAYS, BATCH, CI_UAS, DAY, HOUR, K8S_STAGING, MINUTE,
                                     PRODUCT_TEAMS, SRE_TEAM, Human, Job, Service, SimulationSpec,
                                     World, _ip, _uuid)


# Eight teams own the production services; the other teams' secrets exist (shared ones,
# humans' folders) and are read by people, batch jobs and the migration.
DRIFT_TEAMS = PRODUCT_TEAMS[:7] + (SRE_TEAM,)
# Residential ISP pools engineers connect from at home (public addresses, not the VPN).
HOME_NETS = ("81.2", "86.14", "92.40", "109.150", "73.92", "24.60", "151.25", "176.12")
MIGRATION_ROLE = "platform-kv-migration"
MIN_DAYS = 14  # a migration week, nine days away and two weekends need two weeks


def drift_spec(days: int = MIN_DAYS, seed: int = 7, target_calls: int | None = None,
               attacks: bool = True) -> SimulationSpec:
    """The drift world's fleet: 59 production services, 42 engineers, 12 CI jobs."""
    return SimulationSpec(days=days, seed=seed, services=59, humans=42, ci_jobs=12,
                          batch_jobs=6, attacks=attacks, target_calls=target_calls,
                          world="drift")


class DriftWorld(World):
    """The default world's fleet, re-drawn on eight teams, plus the drift listed above."""

    def __init__(self, spec: SimulationSpec) -> None:
        if spec.days < MIN_DAYS:
            raise ValueError(f"the drift world needs at least {MIN_DAYS} days")
        super().__init__(spec)
        self.kv2 = self._mount("kv-v2/", "kv", "secret", "v0.21.0+builtin")
        rng = self.rand("drift-world")
        weekdays = [d for d in range(self.days) if self.weekday(d) < 5]
        # A public holiday in the second week, and a migration week the weekdays around it.
        self.holiday = weekdays[len(weekdays) // 2 + 1]
        self.migration_days = tuple(d for d in weekdays[len(weekdays) // 2 - 1:][:6]
                                    if d != self.holiday)
        self.pipelines = {t: self._pipeline_times(t) for t in DRIFT_TEAMS}
        self.migrator = self._approle(MIGRATION_ROLE, SRE_TEAM, "platform-migration", 3600,
                                      frozenset("*"))
        self.migrator_host = _ip(rng, BATCH)
        self.new_services = self.new_services[:3]
        self._partner_teams()
        self._reorganise(rng)
        self.staging = [self._staging_copy(s) for s in self.services
                        if self.rand("has-staging", s.actor.key).random() < 0.6]
        self.all_services = (self.services + self.new_services + self.legacy_services
                             + self.moved_services + self.staging)
        self.all_humans = self.humans + self.new_humans + self.legacy_humans + self.movers
        self._plan_people(rng)

    # -- the fleet ------------------------------------------------------------------------

    def _service(self, i: int) -> Service:
        rng = self.rand("drift-service", i)
        team = DRIFT_TEAMS[i % len(DRIFT_TEAMS)]
        apps = ("api", "worker", "consumer", "web", "cron", "gateway", "scheduler", "indexer")
        app = apps[(i // len(DRIFT_TEAMS)) % len(apps)]
        round_ = i // (len(DRIFT_TEAMS) * len(apps))
        name = f"{team}-{app}" + (f"-{round_ + 1}" if round_ else "")
        return self._workload(rng, team, name, False, self.teams[team])

    def _deploys(self, rng, staging, active):
        """As in the default world, but nothing is announced: no change-management feed."""
        epochs, _ = super()._deploys(rng, staging, active)
        return epochs, frozenset()

    def _ci_job(self, i: int) -> Job:
        """CI pipelines build and test against staging secrets; deploy jobs also read the
        team's deploy token. Production secrets are not theirs to read."""
        rng = self.rand("drift-ci", i)
        team = DRIFT_TEAMS[i % len(DRIFT_TEAMS)]
        kind = "deploy" if i < len(DRIFT_TEAMS) else "test"
        role = f"ci-{team}-{kind}" + (f"-{i}" if i >= 2 * len(DRIFT_TEAMS) else "")
        actor = self._approle(role, team, f"ci-{team}", 1200, frozenset((team,)))
        own = rng.sample(self.teams[team], min(len(self.teams[team]), rng.randint(4, 9)))
        secrets = tuple(self.secret(team, f"staging/{s.name}") for s in own)
        if kind == "deploy":
            # Deploys run the database migrations with a production credential.
            secrets += (self.secret(team, "ci/deploy-token"), rng.choice(self.teams[team]))
        return Job(actor, secrets, rng.choice(CI_UAS), "", 0)

    def _pipeline_times(self, team: str) -> tuple[int, ...]:
        """When the team's CI pipelines run: many on weekdays, rarely at weekends or on the
        holiday. Every run redeploys the team's staging copies."""
        rng = self.rand("pipelines", team)
        times = []
        for day in range(self.days):
            quiet = self.weekday(day) >= 5 or day == self.holiday
            runs = (1 if rng.random() < 0.3 else 0) if quiet else rng.randint(3, 12)
            base = self.start_ns + day * DAY
            times += [base + int(rng.uniform(6, 20) * HOUR) for _ in range(runs)]
        return tuple(sorted(times))

    def _staging_copy(self, svc: Service) -> Service:
        rng = self.rand("staging", svc.actor.key)
        team, name = svc.actor.team, svc.actor.metadata["role"]
        ns = f"{team}-staging"
        meta = {"role": name, "service_account_name": name, "service_account_namespace": ns,
                "service_account_uid": _uuid(self.seed, "sa", ns, name)}
        actor = self._actor(f"k8s:{ns}/{name}", "service", team, f"kubernetes-{ns}-{name}",
                            ("default", f"{team}-staging-read"), meta, "kubernetes", 3600,
                            frozenset((team,)))
        secrets = tuple(self.secret(team, f"staging/{s.name}") for s in svc.secrets)
        pods = rng.randint(1, 2)
        # Rollout a few minutes after the pipeline; some pipelines only test and deploy nothing.
        times = [self.start_ns - int(rng.uniform(1, 20) * HOUR)]
        times += [t + int(rng.uniform(3, 8) * MINUTE) for t in self.pipelines[team]
                  if rng.random() < 0.8]
        epochs = tuple((t, tuple(_ip(rng, K8S_STAGING) for _ in range(pods)))
                       for t in sorted(times))
        return Service(actor, secrets, svc.ua, epochs, frozenset(), None)

    def _partner_teams(self) -> None:
        """Each product team works with a partner team and may read a few of its shared
        secrets (an integration's credentials): a team's engineers read another team's folder
        as part of their job, so a cross-team read alone proves nothing."""
        rng = self.rand("partners")
        self.partner = {t: rng.choice([x for x in PRODUCT_TEAMS if x != t]) for t in PRODUCT_TEAMS}
        self.shared = {t: tuple(rng.sample(self.teams[t], 3)) for t in PRODUCT_TEAMS}
        self.humans = [self._partnered(h) for h in self.humans]
        self.new_humans = [self._partnered(h) for h in self.new_humans]
        self.legacy_humans = [self._partnered(h) for h in self.legacy_humans]

    def _partnered(self, h: Human) -> Human:
        if h.sre:
            return h
        return replace(h, actor=self.member(h.actor, h.actor.team),
                       userpass=self.member(h.userpass, h.actor.team))

    def member(self, actor, team: str):
        """``actor`` as an engineer of ``team``: its policies, and its partner's shared read."""
        partner = self.partner[team]
        return replace(actor, team=team,
                       policies=("default", f"{team}-dev", f"{partner}-shared-read"),
                       readable=frozenset((team, partner)))

    def _reorganise(self, rng) -> None:
        """Two services move to another team: the old identity stops, a new one (namespace,
        entity, policy, secret paths of the new team) starts. Two engineers change team: same
        person and login, new policies."""
        movable = [s for s in self.services if s.actor.team != SRE_TEAM]
        moving = rng.sample(movable, 2)
        self.moved_services = []
        for svc in moving:
            t = self.start_ns + rng.randint(4, self.days - 5) * DAY
            t += int(rng.uniform(9, 16) * HOUR)
            new_team = rng.choice([x for x in DRIFT_TEAMS if x not in (svc.actor.team, SRE_TEAM)])
            old = replace(svc, epochs=tuple(e for e in svc.epochs if e[0] < t),
                          active=(ALWAYS[0], t))
            pool = [self.secret(new_team, s.name) for s in svc.secrets]
            new = self._workload(self.rand("moved", svc.actor.key), new_team,
                                 svc.actor.metadata["role"], False, pool, (t, ALWAYS[1]))
            self.moved_services += [old, new]
        self.services = [s for s in self.services if s not in moving]
        people = [h for h in self.humans if not h.sre]
        changing = rng.sample(people, 2)
        self.movers = []
        for h in changing:
            t = self.start_ns + rng.randint(3, self.days - 4) * DAY
            new_team = rng.choice([x for x in PRODUCT_TEAMS if x != h.actor.team])
            self.movers += [replace(h, active=(ALWAYS[0], t)),
                            replace(h, actor=self.member(h.actor, new_team),
                                    userpass=self.member(h.userpass, new_team),
                                    active=(t, ALWAYS[1]))]
        self.humans = [h for h in self.humans if h not in changing]

    def _plan_people(self, rng) -> None:
        """Who works from home how often, who is away for nine days, who is on call when."""
        self.home_net = {h.actor.key: rng.choice(HOME_NETS) for h in self.all_humans}
        self.home_rate = {h.actor.key: rng.choice((0.0, 0.1, 0.2, 0.4)) for h in self.all_humans}
        returner = rng.choice([h for h in self.humans if not h.sre])
        self.away = {returner.actor.key: (2, 10)}  # back on day 11, from home
        sres = [h for h in self.humans if h.sre]
        self.on_call = {week: sres[(week + rng.randrange(len(sres))) % len(sres)]
                        for week in range(self.days // 7 + 1)} if sres else {}

    def human_calls(self, h: Human):
        from secretscope.simulate.drift_benign import _drift_human_calls
        return _drift_human_calls(self, h)


