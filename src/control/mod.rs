//! The control plane: the cloud model behind one lock, its state on disk ([`store`]), and the
//! engine table the state implies, published into a [`TableCell`] after every change.
//!
//! Every change goes through [`ControlPlane::transact`]: due transitions end first, the change
//! runs on the model (which refuses a change without changing anything, and records every
//! change it makes), and a state that moved is committed to the store before the caller hears
//! of it, then published. The API (`crate::api`) runs its actions this way without this module
//! knowing HTTP; the lab (`crate::lab`) reads the cloud and the table cell. Transitions (EIP
//! Associating/Unassociating, instance Starting/Stopping) end on time by
//! [`ControlPlane::run_timers`], which sleeps until the model's next deadline or until a change
//! wakes it: an idle control plane does not wake at all.
//!
//! A shell module: it imports [`crate::telemetry`] and the pure core, nothing else of the shell.

pub mod store;

use crate::clb::{Clb, ClbConfig};
use crate::cloud::Cloud;
use crate::engine::table::{ClbTableConfig, NatGatewayConfig, SharedClb, SharedNapt, Table};
use crate::engine::TableCell;
use crate::napt::{DnatRule, Napt, NaptConfig, SnatRule};
use crate::telemetry::{CounterSource, Snapshot};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::Store;
use tokio::sync::Notify;

/// The state could not be written to `--state`: the change it belonged to was undone (see
/// [`ControlPlane::transact`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

/// What the control plane starts from besides the cloud.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--state DIR`: restore from it if it holds a state, and commit every change to it.
    pub state_dir: Option<PathBuf>,
    pub table: TableExtras,
}

/// Engine-table settings the lab file gives (the ALG policy, source check, the gateway's
/// internet-side address); the cloud's state gives the rest.
#[derive(Clone, Debug, Default)]
pub struct TableExtras {
    pub alg: Option<crate::alg::AlgPolicy>,
    pub source_check: Option<bool>,
    pub internet_gateway: Option<std::net::Ipv4Addr>,
    /// Each NAT gateway's NAPT behaviour, by gateway id (the cloud's defaults for the rest).
    pub napt: BTreeMap<String, NaptConfig>,
    /// Each CLB's listeners and backends, by load balancer id (a CLB without one carries
    /// nothing).
    pub clb: BTreeMap<String, ClbSpec>,
}

/// A CLB as the lab file declares it: its configuration with each backend's address left
/// unspecified, and the instance each backend is (the same for every listener).
#[derive(Clone, Debug, PartialEq)]
pub struct ClbSpec {
    pub config: ClbConfig,
    pub backends: Vec<String>,
}

/// One CLB's shared state, kept for the life of the control plane so that its connections
/// and its backends' health outlive every table, with the configuration it was last given
/// and its backends' instance ids.
struct ClbState {
    clb: SharedClb,
    config: ClbConfig,
    backends: Vec<String>,
}

/// A CLB for the lab's health checker and status: its id, its shared state, and the
/// instance id of each backend (in the order of its listeners' backends).
#[derive(Clone, Debug)]
pub struct LoadBalancerHandle {
    pub id: String,
    pub clb: SharedClb,
    pub backends: Vec<String>,
}

/// One NAT gateway's NAPT, kept for the life of the control plane so that its sessions
/// outlive every change of rules, and the rules it was last given.
struct GatewayNapt {
    napt: SharedNapt,
    rules: (Vec<SnatRule>, Vec<DnatRule>),
}

/// Reads a running dataplane's counters (summed over its workers).
pub type LiveCounters = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// What [`ControlPlane::set_clock_follower`] calls with each advance of the lab clock.
pub type ClockFollower = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

struct Inner {
    cloud: Cloud,
    /// Lab clock minus the real clock, nanoseconds (moved by [`ControlPlane::advance_clock`]).
    offset_ns: i64,
    store: Option<Store>,
    /// Settings of the engine table that come from the lab file, not the cloud's state
    /// (changed only by [`ControlPlane::set_alg_policy`]).
    extras: TableExtras,
    /// Every NAT gateway's NAPT, by gateway id.
    napts: BTreeMap<String, GatewayNapt>,
    /// Every CLB's connections and health, by load balancer id.
    clbs: BTreeMap<String, ClbState>,
    /// The state in memory is ahead of the store: a save failed and its state was kept (the
    /// timer's, which has no caller to refuse, or a change the store could not undo). The
    /// next call saves whether or not it changes anything.
    unsaved: bool,
    /// Test hooks: how many of the next saves, and of the next restores, fail.
    #[cfg(test)]
    faults: Faults,
}

#[cfg(test)]
#[derive(Default)]
struct Faults {
    saves: u32,
    restores: u32,
}

/// The running control plane, shared by the API, the lab and the timer task.
pub struct ControlPlane {
    inner: Mutex<Inner>,
    cell: Arc<TableCell>,
    /// The running dataplane's counters, when one runs (`--backend netns`).
    live: OnceLock<LiveCounters>,
    /// Told how far [`ControlPlane::advance_clock`] moved the lab clock (the running
    /// dataplane's engines follow it).
    clock_follower: OnceLock<ClockFollower>,
    /// Signalled by every change of state, so [`ControlPlane::run_timers`] looks at the next
    /// deadline again.
    changed: Notify,
    /// How often the timer task woke (see [`ControlPlane::timer_wakeups`]).
    wakeups: AtomicU64,
}

fn real_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Inner {
    fn lab_now(&self) -> u64 {
        (real_ns() as i64).saturating_add(self.offset_ns).max(0) as u64
    }

    /// Writes the whole state to the store (if any); clears [`Inner::unsaved`] when it did.
    fn save(&mut self) -> Result<(), StoreError> {
        let Some(store) = self.store.as_mut() else {
            self.unsaved = false;
            return Ok(());
        };
        #[cfg(test)]
        if self.faults.saves > 0 {
            self.faults.saves -= 1;
            return Err(StoreError("a save made to fail (test)".into()));
        }
        let cloud = serde_json::to_string(&self.cloud).map_err(|e| StoreError(e.to_string()))?;
        store
            .put(&[
                ("cloud", cloud),
                ("clock_offset_ns", self.offset_ns.to_string()),
            ])
            .map_err(StoreError)?;
        self.unsaved = false;
        Ok(())
    }

    /// Puts back the state the store holds (the last one saved), clock offset included.
    fn restore(&mut self) -> Result<(), String> {
        let Some(store) = self.store.as_ref() else {
            return Err("no --state to restore from".into());
        };
        #[cfg(test)]
        if self.faults.restores > 0 {
            self.faults.restores -= 1;
            return Err("a restore made to fail (test)".into());
        }
        let saved = store.get("cloud")?.ok_or("no saved cloud")?;
        let cloud: Cloud = serde_json::from_str(&saved).map_err(|e| e.to_string())?;
        let offset_ns = match store.get("clock_offset_ns")? {
            Some(o) => o.parse().map_err(|e| format!("clock_offset_ns: {e}"))?,
            None => 0,
        };
        self.cloud = cloud;
        self.offset_ns = offset_ns;
        self.unsaved = false;
        Ok(())
    }
}

impl ControlPlane {
    /// Restores the state from `--state` if it holds one, else starts from `initial`; ends
    /// the transitions due, saves and publishes the first table.
    pub fn new(initial: Cloud, opts: &Options) -> Result<Arc<ControlPlane>, String> {
        let mut store = match &opts.state_dir {
            Some(d) => Some(Store::open(d)?),
            None => None,
        };
        let mut cloud = initial;
        let mut offset_ns = 0;
        if let Some(s) = store.as_mut() {
            if let Some(saved) = s.get("cloud")? {
                cloud = serde_json::from_str(&saved)
                    .map_err(|e| format!("--state: the saved cloud cannot be read ({e}); move the directory away to start afresh"))?;
                tracing::info!(
                    eips = cloud.eips.len(),
                    "restored the control plane from --state"
                );
            }
            if let Some(o) = s.get("clock_offset_ns")? {
                offset_ns = o.parse().unwrap_or(0);
            }
        }
        let mut napts = BTreeMap::new();
        let mut clbs = BTreeMap::new();
        let table = build_table(&cloud, &opts.table, &mut napts, &mut clbs)
            .map_err(|e| format!("the lab's table: {e}"))?;
        let cp = Arc::new(ControlPlane {
            inner: Mutex::new(Inner {
                cloud,
                offset_ns,
                store,
                extras: opts.table.clone(),
                napts,
                clbs,
                unsaved: false,
                #[cfg(test)]
                faults: Faults::default(),
            }),
            cell: Arc::new(TableCell::new(table)),
            live: OnceLock::new(),
            clock_follower: OnceLock::new(),
            changed: Notify::new(),
            wakeups: AtomicU64::new(0),
        });
        {
            let mut g = cp.lock();
            let now = g.lab_now();
            g.cloud.handle_timeout(now);
            // Saved and published whole: what built it (the lab file, the store) needs no record.
            g.cloud.take_changes();
            g.save().map_err(|e| e.to_string())?;
            cp.publish(&mut g);
        }
        Ok(cp)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock may have left a half-made change: refuse to go on with it.
        self.inner
            .lock()
            .expect("the control plane's lock (a change panicked)")
    }

    fn publish(&self, g: &mut Inner) {
        match build_table(&g.cloud, &g.extras, &mut g.napts, &mut g.clbs) {
            Ok(t) => {
                let generation = self.cell.publish(t);
                tracing::debug!(generation, "engine table published");
            }
            Err(e) => tracing::error!("the cloud state makes no valid table (a bug): {e}"),
        }
    }

    /// Runs one change (or query) on the cloud: `f` gets the model and the lab time (ns),
    /// after the transitions due by then have ended. If the state moved at all (the model's
    /// record, [`Cloud::take_changes`], is not empty), it is committed to the store before
    /// this returns, published to the engines, and the timer task is woken; a query that ends
    /// no transition costs no copy, comparison, save or publication of the state.
    ///
    /// `f` must change nothing when it fails: the model's methods check every rule before they
    /// change anything, and the API's handlers call one of them after checking their
    /// parameters, so nothing is ever undone here. A failed `f` that changed the model anyway
    /// is a bug: it is logged, the state it left is saved and published like any other (a
    /// change is never kept unsaved, nor lost silently), and debug builds then panic.
    ///
    /// A failed commit undoes the whole call, the ended transitions included, and returns its
    /// error: the state goes back to the one the store holds (read back and parsed, which
    /// costs as much as a save but only when a save failed), so a caller told of an error
    /// never sees its change live, in the model or the table. The ended transitions end again
    /// at the next call. Should the store not even read back, the change stays (the model
    /// cannot undo it): it is published so that the table agrees with the model, marked
    /// unsaved, and saved by the next call, whatever that call does; the error is returned.
    pub fn transact<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Cloud, u64) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut g = self.lock();
        let now = g.lab_now();
        // Transitions due now end first; they count as a change to save and publish even when
        // `f` itself is a query.
        g.cloud.handle_timeout(now);
        let ended = g.cloud.take_changes();
        let result = f(&mut g.cloud, now);
        let made = g.cloud.take_changes();
        let refused_yet_changed = result.is_err() && !made.is_empty();
        if refused_yet_changed {
            tracing::error!(
                changes = ?made,
                "a refused call changed the model (a bug): its state is saved and published"
            );
        }
        let committed = if !ended.is_empty() || !made.is_empty() {
            tracing::trace!(?ended, ?made, "the state moved");
            self.commit(&mut g)
        } else {
            if g.unsaved {
                // An earlier save failed and its state was kept: this call saves it, or
                // leaves it for the next (a query is not refused for an earlier save).
                if let Err(e) = g.save() {
                    tracing::error!("saving state (still unsaved): {e}");
                }
            }
            Ok(())
        };
        debug_assert!(
            !refused_yet_changed,
            "a refused call changed the model: {made:?}"
        );
        committed?;
        result
    }

    /// Saves the state a change left, then publishes it and wakes the timer. A failed save
    /// puts back the state the store holds (see [`ControlPlane::transact`]) and returns its
    /// error.
    fn commit(&self, g: &mut Inner) -> Result<(), StoreError> {
        let ahead = g.unsaved;
        let Err(e) = g.save() else {
            self.publish(g);
            self.changed.notify_one();
            return Ok(());
        };
        match g.restore() {
            Ok(()) => {
                tracing::error!("saving state: {e}; the change is undone");
                // The table showed a state the store did not hold: it follows the store back.
                if ahead {
                    self.publish(g);
                }
            }
            Err(r) => {
                tracing::error!(
                    "saving state: {e}; the state cannot be read back ({r}): the change stays, \
                     unsaved, until a save succeeds"
                );
                g.unsaved = true;
                self.publish(g);
            }
        }
        // Deadlines may have moved (transitions ended and put back, or started).
        self.changed.notify_one();
        Err(e)
    }

    /// Makes a request's signature nonce survive a restart (with `--state`): written before
    /// the call is answered, like every change, so a replay after a restart is refused too.
    pub fn remember_nonce(
        &self,
        key_id: &str,
        nonce: &str,
        until: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        match g.store.as_mut() {
            Some(s) => s.put_nonce(key_id, nonce, until, now).map_err(StoreError),
            None => Ok(()),
        }
    }

    /// The nonces a previous run remembered that are still within their time at `now` (unix
    /// seconds): (access key id, nonce, until).
    pub fn saved_nonces(&self, now: i64) -> Vec<(String, String, i64)> {
        let g = self.lock();
        match g.store.as_ref().map(|s| s.nonces(now)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                tracing::error!("--state: {e}; nonces of the previous run are not refused");
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Replaces the NAT-mode ALG policy (the lab file's `[alg]`) and publishes the table at
    /// once: what `eiplab compat` does between its rows. Not part of the cloud's state (the
    /// cloud has no API for it), so it is not saved.
    pub fn set_alg_policy(&self, policy: crate::alg::AlgPolicy) {
        let mut g = self.lock();
        g.extras.alg = Some(policy);
        self.publish(&mut g);
    }

    /// Reads the cloud's state as it is (held under the control plane's lock: keep `f` short).
    pub fn with_cloud<R>(&self, f: impl FnOnce(&Cloud) -> R) -> R {
        let g = self.lock();
        f(&g.cloud)
    }

    /// The lab clock now, nanoseconds since the Unix epoch (the real clock plus every
    /// [`advance_clock`](Self::advance_clock)).
    pub fn lab_now(&self) -> u64 {
        self.lock().lab_now()
    }

    /// Moves the lab clock forward (the 7-day recovery window), ends what is due by the new
    /// time, saves and publishes; returns the new lab time (ns).
    ///
    /// The clock offset is part of the saved state, so this always commits; a failed commit
    /// puts the clock back with the rest, as [`ControlPlane::transact`] does.
    pub fn advance_clock(&self, seconds: u64) -> Result<u64, StoreError> {
        let mut g = self.lock();
        g.offset_ns = g
            .offset_ns
            .saturating_add((seconds as i64).saturating_mul(1_000_000_000));
        let now = g.lab_now();
        g.cloud.handle_timeout(now);
        g.cloud.take_changes();
        self.commit(&mut g)?;
        drop(g);
        if let Some(f) = self.clock_follower.get() {
            f(std::time::Duration::from_secs(seconds));
        }
        Ok(now)
    }

    /// Makes every [`advance_clock`](Self::advance_clock) also call `f` (once; later calls
    /// are ignored): the lab moves its dataplane's clock with it, so sessions and fragments
    /// age with the EIPs' windows.
    pub fn set_clock_follower(&self, f: ClockFollower) {
        let _ = self.clock_follower.set(f);
    }

    /// Where the engines take their tables from.
    pub fn cell(&self) -> &Arc<TableCell> {
        &self.cell
    }

    /// Connects a running dataplane's counters to [`counters`](Self::counters) (once; later
    /// calls are ignored).
    pub fn set_live_counters(&self, f: LiveCounters) {
        let _ = self.live.set(f);
    }

    /// The running dataplane's counters now, or `None` when no dataplane runs.
    pub fn counters(&self) -> Option<Snapshot> {
        let mut snap = self.live.get().map(|f| f())?;
        let g = self.lock();
        snap.nat_gateways = g
            .napts
            .iter()
            .map(|(id, n)| {
                let n = n.napt.lock().unwrap_or_else(|p| p.into_inner());
                let stats = crate::telemetry::NatGatewayStats {
                    sessions: n.sessions() as u64,
                    mappings: n.mappings() as u64,
                    max_sessions: n.config().max_sessions as u64,
                };
                (id.clone(), stats)
            })
            .collect();
        snap.load_balancers = g
            .clbs
            .iter()
            .map(|(id, c)| {
                let stats = c.clb.lock().unwrap_or_else(|p| p.into_inner()).stats();
                let lb = crate::telemetry::LoadBalancerStats {
                    stats,
                    backends: c.backends.clone(),
                };
                (id.clone(), lb)
            })
            .collect();
        Some(snap)
    }

    /// The CLBs the lab file declares listeners for: their shared state (which the lab's
    /// health checker reports into) and their backends' instance ids.
    pub fn load_balancers(&self) -> Vec<LoadBalancerHandle> {
        self.lock()
            .clbs
            .iter()
            .map(|(id, c)| LoadBalancerHandle {
                id: id.clone(),
                clb: c.clb.clone(),
                backends: c.backends.clone(),
            })
            .collect()
    }

    /// Ends every transition on time, forever: sleeps until the model's next deadline, or
    /// until a change or a clock move may have brought a nearer one. With no transition under
    /// way it sleeps until the next change. Spawn it once, next to the API.
    ///
    /// Deadlines are on the lab clock, which runs at the real clock's rate; the sleep is on
    /// the monotonic clock, so a jump of the system clock moves an end by at most the time
    /// that was left.
    pub async fn run_timers(&self) {
        loop {
            let wait = self.end_due_transitions();
            match wait {
                None => self.changed.notified().await,
                Some(ns) => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_nanos(ns)) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times [`run_timers`](Self::run_timers) woke: once per deadline and once per
    /// change, never on a period.
    pub fn timer_wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Ends the transitions due now (saving and publishing if any did); returns the time to
    /// the next deadline (ns), if any. A failed save keeps the state (nobody called, so nobody
    /// is told; undoing would only make the transitions due again) and leaves it unsaved for
    /// the next call.
    fn end_due_transitions(&self) -> Option<u64> {
        let mut g = self.lock();
        let now = g.lab_now();
        if g.cloud.poll_timeout().is_some_and(|t| t <= now) {
            g.cloud.handle_timeout(now);
            g.cloud.take_changes();
            if let Err(e) = g.save() {
                tracing::error!("saving state: {e}; kept unsaved until the next call");
                g.unsaved = true;
            }
            self.publish(&mut g);
        }
        g.cloud.poll_timeout().map(|t| t.saturating_sub(now))
    }
}

/// `/metrics` reads the cloud and the live counters (zeros before a dataplane runs).
impl CounterSource for ControlPlane {
    fn read_counters(&self, f: &mut dyn FnMut(&Cloud, &Snapshot)) {
        let snap = self.counters().unwrap_or_default();
        let g = self.lock();
        f(&g.cloud, &snap)
    }
}

/// The table of `cloud`; each NAT gateway gets its NAPT from `napts` (made on first sight,
/// given its new rules when they changed, dropped with its gateway).
fn build_table(
    cloud: &Cloud,
    x: &TableExtras,
    napts: &mut BTreeMap<String, GatewayNapt>,
    clbs: &mut BTreeMap<String, ClbState>,
) -> Result<Table, String> {
    let mut b = cloud.table();
    b = add_clbs(b, cloud, x, clbs);
    let gateways = cloud.nat_gateway_rules();
    napts.retain(|id, _| gateways.iter().any(|g| &g.id == id));
    for g in gateways {
        let rules = (g.snat, g.dnat);
        let napt = match napts.get_mut(&g.id) {
            Some(n) => {
                if n.rules != rules {
                    let mut live = n.napt.lock().unwrap_or_else(|p| p.into_inner());
                    match live.set_rules(rules.0.clone(), rules.1.clone()) {
                        Ok(()) => n.rules = rules,
                        // The API and the lab file refuse such entries; should one get
                        // through, the gateway keeps the rules it had.
                        Err(e) => {
                            tracing::error!(gateway = %g.id, "NAT gateway rules refused: {e}")
                        }
                    }
                }
                n.napt.clone()
            }
            None => {
                let cfg = x.napt.get(&g.id).cloned().unwrap_or_else(NaptConfig::cloud);
                let napt = Napt::new(cfg, rules.0.clone(), rules.1.clone())
                    .map_err(|e| format!("NAT gateway {}: {e}", g.id))?;
                let napt = Arc::new(Mutex::new(napt));
                napts.insert(
                    g.id.clone(),
                    GatewayNapt {
                        napt: napt.clone(),
                        rules,
                    },
                );
                napt
            }
        };
        b = b.nat_gateway(NatGatewayConfig {
            id: g.id,
            napt,
            eips: g.eips,
            sources: g.sources,
        });
    }
    if let Some(a) = x.alg {
        b = b.alg_policy(a);
    }
    if let Some(s) = x.source_check {
        b = b.source_check(s);
    }
    if let Some(g) = x.internet_gateway {
        b = b.internet_gateway(g);
    }
    b.build().map_err(|e| e.to_string())
}

/// Each CLB of `x`: its state (made on first sight, given a changed configuration in place,
/// so its connections and backends' health carry on), and in the table with its intranet
/// address and, when an EIP maps to it, its EIP.
/// Backends are the instances' primary private IPs.
fn add_clbs(
    mut b: crate::engine::table::TableBuilder,
    cloud: &Cloud,
    x: &TableExtras,
    clbs: &mut BTreeMap<String, ClbState>,
) -> crate::engine::table::TableBuilder {
    clbs.retain(|id, _| x.clb.contains_key(id));
    for (id, spec) in &x.clb {
        let primary = |inst: &str| {
            cloud
                .enis
                .values()
                .find(|e| e.primary && e.instance.as_deref() == Some(inst))
        };
        let mut config = spec.config.clone();
        for l in &mut config.listeners {
            for (k, be) in l.backends.iter_mut().enumerate() {
                if let Some(e) = spec.backends.get(k).and_then(|i| primary(i)) {
                    be.addr = e.private_ips[0];
                }
            }
        }
        let state = clbs.entry(id.clone()).or_insert_with(|| ClbState {
            clb: Arc::new(Mutex::new(Clb::new(config.clone()))),
            config: config.clone(),
            backends: spec.backends.clone(),
        });
        if state.config != config {
            state
                .clb
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_config(config.clone());
            state.config = config;
            state.backends = spec.backends.clone();
        }
        let eip = cloud.eips.values().find(|e| {
            matches!(
                e.status,
                crate::cloud::EipStatus::InUse | crate::cloud::EipStatus::Unassociating
            ) && e.binding.as_ref().is_some_and(|bd| {
                bd.bind_type == crate::cloud::BindType::SlbInstance && &bd.instance_id == id
            })
        });
        let vip = cloud
            .load_balancers
            .get(id)
            .filter(|l| l.intranet && l.vpc)
            .and_then(|l| l.address);
        if eip.is_some() || vip.is_some() {
            let backend_enis = spec
                .backends
                .iter()
                .filter_map(|i| primary(i))
                .map(|e| e.index)
                .collect();
            b = b.clb(ClbTableConfig {
                id: id.clone(),
                clb: state.clb.clone(),
                vip,
                eip: eip.map(|e| (e.address, e.slot)),
                backend_enis,
            });
        }
    }
    b
}

#[cfg(test)]
mod tests;
