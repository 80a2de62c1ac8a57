use super::*;
use crate::cloud::{Associate, BindType, CloudError, EipStatus, InstanceStatus};
use crate::engine::AssociationMode;
use std::net::Ipv4Addr;
use std::time::Instant;

const TRANSITION: Duration = Duration::from_millis(100);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// i-web (Running) with eni-web0 (10.0.1.10), eip-web (Available).
fn cloud() -> Cloud {
    crate::cloud::fixture::web(TRANSITION.as_nanos() as u64, real_ns())
}

/// What a caller of `transact` returns: the model's refusal or the store's.
#[derive(Debug)]
enum Refused {
    Cloud(#[allow(dead_code)] CloudError),
    Store(#[allow(dead_code)] StoreError),
}

impl From<CloudError> for Refused {
    fn from(e: CloudError) -> Self {
        Refused::Cloud(e)
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

fn associate(c: &mut Cloud, now: u64) -> Result<(), Refused> {
    c.associate(
        now,
        &Associate {
            allocation_id: "eip-web".into(),
            instance_id: "i-web".into(),
            bind_type: BindType::EcsInstance,
            mode: AssociationMode::Nat,
            private_ip: None,
        },
    )?;
    Ok(())
}

/// The EIP the published table maps to i-web's private address under NAT.
fn mapped(cp: &ControlPlane) -> Option<Ipv4Addr> {
    cp.cell().load().1.nat_eip_of(ip("10.0.1.10"))
}

fn status(cp: &ControlPlane) -> EipStatus {
    cp.with_cloud(|c| c.eips["eip-web"].status)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "eiplab-control-{tag}-{}-{}",
        std::process::id(),
        real_ns()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_refused_change_changes_nothing_and_nothing_is_published() {
    let dir = temp_dir("refused");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    cp.transact(|c, _| {
        c.add_eni(crate::cloud::fixture::eni(
            "eni-x",
            "10.0.1.30",
            false,
            None,
        ));
        Ok::<_, Refused>(())
    })
    .unwrap();
    let before = cp.with_cloud(Cloud::clone);
    let generation = cp.cell().generation();
    let saved = || Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
    let saved_before = saved();
    // Refusals found late, after every other rule passed: a second EIP of a batch (the
    // first one passes, and its private IP is taken by then), an ECS instance in BINDED mode.
    let api = |action: &str, params: &[(&str, &str)]| {
        let p: crate::api::actions::Params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let action = crate::api::actions::Action::find(action).unwrap();
        let r: Result<_, crate::api::server::ApiError> =
            cp.transact(|c, now| action.run(c, now, &p));
        r.unwrap_err().code
    };
    cp.transact(|c, now| {
        c.allocate(now, "cn-shanghai", 5, None, 7)?;
        Ok::<_, Refused>(())
    })
    .unwrap();
    let second = cp.with_cloud(|c| c.eips.keys().find(|k| *k != "eip-web").unwrap().clone());
    let before_batch = cp.with_cloud(Cloud::clone);
    let generation_batch = cp.cell().generation();
    assert_eq!(
        api(
            "AssociateEipAddressBatch",
            &[
                ("InstanceIds.1", "eip-web"),
                ("InstanceIds.2", &second),
                ("BindedInstanceId", "eni-x"),
                ("BindedInstanceType", "NetworkInterface"),
            ],
        ),
        "InvalidEip.EipQuotaExceeded"
    );
    assert_eq!(cp.with_cloud(Cloud::clone), before_batch);
    assert_eq!(cp.cell().generation(), generation_batch);
    let r: Result<(), Refused> = cp.transact(|c, now| {
        c.associate(
            now,
            &Associate {
                allocation_id: "eip-web".into(),
                instance_id: "i-web".into(),
                bind_type: BindType::EcsInstance,
                mode: AssociationMode::Binded,
                private_ip: None,
            },
        )?;
        Ok(())
    });
    assert!(matches!(r, Err(Refused::Cloud(_))), "{r:?}");
    assert_ne!(saved(), saved_before, "the allocation was saved");
    let saved_before = saved();
    assert_eq!(cp.with_cloud(Cloud::clone), before_batch);
    assert_eq!(cp.cell().generation(), generation_batch);
    assert_eq!(saved(), saved_before, "nothing saved");
    assert_ne!(before, before_batch);
    assert!(generation_batch > generation);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_call_that_changed_the_model_is_a_bug_saved_published_then_asserted() {
    let dir = temp_dir("bug");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let generation = cp.cell().generation();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let r: Result<(), Refused> = cp.transact(|c, now| {
            associate(c, now)?;
            // A second step fails after the model already changed: no handler may do this.
            c.release(now, "eip-nope")?;
            Ok(())
        });
        r
    }));
    // The change is not lost: saved and published before debug builds stop on it.
    let saved = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
    let saved: Cloud = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved.eips["eip-web"].status, EipStatus::Associating);
    assert!(cp.cell().generation() > generation);
    if cfg!(debug_assertions) {
        assert!(outcome.is_err(), "debug builds assert on it");
    } else {
        assert!(matches!(outcome, Ok(Err(Refused::Cloud(_)))));
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_save_undoes_the_call_and_returns_the_stores_error() {
    let dir = temp_dir("failsave");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let r: Result<(), Refused> = cp.transact(associate);
    r.unwrap();
    let before = cp.with_cloud(Cloud::clone);
    let generation = cp.cell().generation();
    let saved = || -> Cloud {
        let s = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
        serde_json::from_str(&s).unwrap()
    };
    assert_eq!(saved(), before);
    // Past the deadline: the call ends Associating, then changes the bandwidth; the save
    // fails, and both are undone.
    std::thread::sleep(TRANSITION + Duration::from_millis(20));
    cp.lock().faults.saves = 1;
    let r: Result<(), Refused> = cp.transact(|c, _| {
        c.set_bandwidth("eip-web", 50)?;
        Ok(())
    });
    assert!(matches!(r, Err(Refused::Store(_))), "{r:?}");
    assert_eq!(
        cp.with_cloud(Cloud::clone),
        before,
        "back to the saved state"
    );
    assert_eq!(status(&cp), EipStatus::Associating);
    assert_eq!(cp.cell().generation(), generation, "nothing published");
    assert_eq!(mapped(&cp), None);
    assert_eq!(saved(), before);
    // The next call ends the transition again, and its change is saved.
    let r: Result<(), Refused> = cp.transact(|c, _| {
        c.set_bandwidth("eip-web", 50)?;
        Ok(())
    });
    r.unwrap();
    cp.with_cloud(|c| {
        assert_eq!(
            (c.eips["eip-web"].status, c.eips["eip-web"].bandwidth),
            (EipStatus::InUse, 50)
        )
    });
    assert_eq!(saved(), cp.with_cloud(Cloud::clone));
    assert_eq!(mapped(&cp), Some(ip("198.51.100.10")));
    // A failed save of the clock's move puts the clock back too.
    let clock = cp.lock().offset_ns;
    cp.lock().faults.saves = 1;
    assert!(cp.advance_clock(3600).is_err());
    assert_eq!(cp.lock().offset_ns, clock);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_the_store_cannot_undo_stays_published_and_the_next_call_saves_it() {
    let dir = temp_dir("failrestore");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let saved = || -> Cloud {
        let s = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
        serde_json::from_str(&s).unwrap()
    };
    let first = saved();
    let generation = cp.cell().generation();
    {
        let mut g = cp.lock();
        g.faults.saves = 1;
        g.faults.restores = 1;
    }
    let r: Result<(), Refused> = cp.transact(associate);
    assert!(matches!(r, Err(Refused::Store(_))), "{r:?}");
    // Not undone (the store could not say to what): live, published, unsaved.
    assert_eq!(status(&cp), EipStatus::Associating);
    assert!(cp.cell().generation() > generation);
    assert_eq!(saved(), first);
    assert!(cp.lock().unsaved);
    // A query that changes nothing saves it.
    let _: Result<usize, Refused> = cp.transact(|c, _| Ok(c.eips.len()));
    assert!(!cp.lock().unsaved);
    assert_eq!(saved().eips["eip-web"].status, EipStatus::Associating);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_transition_the_timer_could_not_save_is_saved_by_the_next_call() {
    let dir = temp_dir("failtimer");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let saved_status = || -> EipStatus {
        let s = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
        let c: Cloud = serde_json::from_str(&s).unwrap();
        c.eips["eip-web"].status
    };
    let r: Result<(), Refused> = cp.transact(associate);
    r.unwrap();
    std::thread::sleep(TRANSITION + Duration::from_millis(20));
    cp.lock().faults.saves = 1;
    assert_eq!(cp.end_due_transitions(), None);
    // Kept and published (nobody to refuse), not saved.
    assert_eq!(status(&cp), EipStatus::InUse);
    assert_eq!(mapped(&cp), Some(ip("198.51.100.10")));
    assert_eq!(saved_status(), EipStatus::Associating);
    let generation = cp.cell().generation();
    let _: Result<usize, Refused> = cp.transact(|c, _| Ok(c.eips.len()));
    assert_eq!(saved_status(), EipStatus::InUse);
    assert_eq!(cp.cell().generation(), generation, "saved, not republished");
    // Had that save failed too, a later change whose save fails goes back to the store's
    // state, and the table with it.
    let r: Result<(), Refused> = cp.transact(|c, now| {
        c.unassociate(now, "eip-web", false)?;
        Ok(())
    });
    r.unwrap();
    std::thread::sleep(TRANSITION + Duration::from_millis(20));
    cp.lock().faults.saves = 2;
    cp.end_due_transitions();
    assert_eq!(mapped(&cp), None, "Available, published, unsaved");
    let r: Result<(), Refused> = cp.transact(|c, _| {
        c.set_bandwidth("eip-web", 9)?;
        Ok(())
    });
    assert!(matches!(r, Err(Refused::Store(_))), "{r:?}");
    assert_eq!(status(&cp), EipStatus::Unassociating, "the store's state");
    assert_eq!(
        mapped(&cp),
        Some(ip("198.51.100.10")),
        "the table follows the store back"
    );
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_change_is_saved_before_it_returns_and_published() {
    let dir = temp_dir("save");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let generation = cp.cell().generation();
    let r: Result<(), Refused> = cp.transact(associate);
    r.unwrap();
    assert_eq!(status(&cp), EipStatus::Associating);
    assert!(cp.cell().generation() > generation);
    // The store holds it: a second control plane on the same directory starts from it (and
    // ends the transition, long due by then or not, at its own time).
    let saved = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
    let saved: Cloud = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved, cp.with_cloud(Cloud::clone));
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_query_that_ends_a_due_transition_saves_and_publishes() {
    let dir = temp_dir("query");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let r: Result<(), Refused> = cp.transact(associate);
    r.unwrap();
    // No timer task runs here: the transition ends at the next call.
    std::thread::sleep(TRANSITION + Duration::from_millis(20));
    assert_eq!(status(&cp), EipStatus::Associating);
    let generation = cp.cell().generation();
    let seen: Result<EipStatus, Refused> = cp.transact(|c, _| Ok(c.eips["eip-web"].status));
    assert_eq!(seen.unwrap(), EipStatus::InUse);
    assert!(cp.cell().generation() > generation);
    assert_eq!(mapped(&cp), Some(ip("198.51.100.10")), "InUse is published");
    let saved = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
    let saved: Cloud = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved.eips["eip-web"].status, EipStatus::InUse);
    // A query that changes nothing publishes nothing.
    let generation = cp.cell().generation();
    let _: Result<usize, Refused> = cp.transact(|c, _| Ok(c.eips.len()));
    assert_eq!(cp.cell().generation(), generation);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_timer_ends_transitions_without_a_call_and_sleeps_otherwise() {
    let cp = ControlPlane::new(cloud(), &Options::default()).unwrap();
    runtime().block_on(async {
        let timer = tokio::spawn({
            let cp = cp.clone();
            async move { cp.run_timers().await }
        });
        // Idle: nothing due, nothing changes, nobody wakes (reads do not wake it either).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status(&cp), EipStatus::Available);
        assert_eq!(cp.timer_wakeups(), 0, "an idle control plane woke");

        // Associating ends by itself, and the table follows.
        let generation = cp.cell().generation();
        let r: Result<(), Refused> = cp.transact(associate);
        r.unwrap();
        let started = Instant::now();
        while status(&cp) != EipStatus::InUse {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still {:?} {:?} after the association",
                status(&cp),
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cp.cell().generation() >= generation + 2, "InUse published");
        assert_eq!(mapped(&cp), Some(ip("198.51.100.10")));
        // Woken by the change, then by the deadline; a 10 ms period would count ten or more.
        let woke = cp.timer_wakeups();
        assert!(
            (1..=3).contains(&woke),
            "{woke} wake-ups for one transition"
        );

        // Unassociating and an instance's Stopping end the same way.
        let r: Result<(), Refused> = cp.transact(|c, now| {
            c.unassociate(now, "eip-web", false)?;
            c.set_running(now, "i-web", false)?;
            Ok(())
        });
        r.unwrap();
        let started = Instant::now();
        loop {
            let (eip, inst) =
                cp.with_cloud(|c| (c.eips["eip-web"].status, c.instances["i-web"].status));
            if (eip, inst) == (EipStatus::Available, InstanceStatus::Stopped) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still {eip:?} and {inst:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(mapped(&cp), None, "Available is published");

        // Idle again: no more wake-ups.
        let woke = cp.timer_wakeups();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cp.timer_wakeups(), woke, "the timer woke with nothing due");

        // Moving the clock wakes it once (a nearer deadline may follow).
        cp.advance_clock(60).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cp.timer_wakeups(), woke + 1);
        timer.abort();
    });
}

#[test]
fn a_change_brings_a_nearer_deadline_forward() {
    // A long transition is under way when a short one starts: the timer, asleep until the
    // long one ends, must wake for the short one.
    let mut c = cloud();
    c.add_instance(crate::cloud::fixture::instance(
        "i-db",
        InstanceStatus::Running,
    ));
    c.settings.transition_ns = Duration::from_secs(3600).as_nanos() as u64;
    let cp = ControlPlane::new(c, &Options::default()).unwrap();
    runtime().block_on(async {
        let timer = tokio::spawn({
            let cp = cp.clone();
            async move { cp.run_timers().await }
        });
        let r: Result<(), Refused> = cp.transact(|c, now| {
            c.set_running(now, "i-db", false)?;
            Ok(())
        });
        r.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r: Result<(), Refused> = cp.transact(|c, now| {
            c.set_transition_ns(TRANSITION.as_nanos() as u64);
            associate(c, now)
        });
        r.unwrap();
        let started = Instant::now();
        while status(&cp) != EipStatus::InUse {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the short transition waited for the long one"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            cp.with_cloud(|c| c.instances["i-db"].status),
            InstanceStatus::Stopping
        );
        timer.abort();
    });
}

#[test]
fn set_alg_policy_publishes_a_table_with_the_new_policy_and_keeps_the_rest() {
    use crate::alg::{AlgAction, AlgPolicy, AlgProtocol};
    let opts = Options {
        state_dir: None,
        table: TableExtras {
            alg: Some(AlgPolicy::all(AlgAction::Drop)),
            source_check: Some(false),
            internet_gateway: None,
            napt: Default::default(),
            clb: Default::default(),
        },
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let generation = cp.cell().generation();
    let pass_ftp = AlgPolicy::all(AlgAction::Drop).with(AlgProtocol::Ftp, AlgAction::Pass);
    cp.set_alg_policy(pass_ftp);
    let (g, table) = cp.cell().load();
    assert!(g > generation, "a new table is published at once");
    assert_eq!(table.alg_policy(), pass_ftp);
    // Later changes of the cloud keep the policy that was set.
    cp.set_alg_policy(AlgPolicy::all(AlgAction::Inspect));
    let before = cp.cell().generation();
    let r: Result<(), Refused> = cp.transact(associate);
    r.unwrap();
    assert!(
        cp.cell().generation() > before,
        "the change published a table"
    );
    assert_eq!(
        cp.cell().load().1.alg_policy(),
        AlgPolicy::all(AlgAction::Inspect)
    );
}

#[test]
fn nonces_are_kept_with_the_state_until_their_time_is_up() {
    let dir = temp_dir("nonces");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    cp.remember_nonce("LTAIkey", "n-1", 2_000, 1_000).unwrap();
    cp.remember_nonce("LTAIkey", "n-2", 1_100, 1_000).unwrap();
    drop(cp);
    let cp = ControlPlane::new(cloud(), &opts).unwrap();
    let mut seen = cp.saved_nonces(1_050);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("LTAIkey".to_string(), "n-1".to_string(), 2_000),
            ("LTAIkey".to_string(), "n-2".to_string(), 1_100),
        ]
    );
    // Past its time a nonce is gone (and the next write forgets it on disk too).
    assert_eq!(cp.saved_nonces(1_500).len(), 1);
    cp.remember_nonce("LTAIkey", "n-3", 3_000, 1_500).unwrap();
    assert_eq!(
        cp.saved_nonces(0).len(),
        2,
        "n-2 was removed by the write at 1500"
    );
    // Without --state nothing is kept.
    let mem = ControlPlane::new(cloud(), &Options::default()).unwrap();
    mem.remember_nonce("LTAIkey", "n-1", 2_000, 1_000).unwrap();
    assert!(mem.saved_nonces(0).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entry_made_through_the_api_is_saved_republished_and_restored() {
    use crate::cloud::nat::{ForwardSpec, SnatSpec};
    let dir = temp_dir("entries");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    // eip-web InUse on ngw-t (no transition: it is settled at once).
    let mut initial = crate::cloud::fixture::web(0, real_ns());
    initial.nat_gateways.insert(
        "ngw-t".into(),
        crate::cloud::NatGateway {
            id: "ngw-t".into(),
            region: "cn-shanghai".into(),
            vswitch: "vsw-a".into(),
            eip_takes_private_ip: false,
        },
    );
    initial
        .associate(
            real_ns(),
            &Associate {
                allocation_id: "eip-web".into(),
                instance_id: "ngw-t".into(),
                bind_type: BindType::Nat,
                mode: AssociationMode::Nat,
                private_ip: None,
            },
        )
        .unwrap();
    let cp = ControlPlane::new(initial.clone(), &opts).unwrap();
    let generation = cp.cell().generation();
    let snat = SnatSpec {
        snat_ip: Some("198.51.100.10".into()),
        source_cidr: Some("10.0.1.0/24".into()),
        ..SnatSpec::default()
    };
    let r: Result<String, Refused> =
        cp.transact(|c, _| Ok(c.create_snat_entry("cn-shanghai", "stb-ngw-t", &snat)?.0));
    let sid = r.unwrap();
    assert!(cp.cell().generation() > generation, "republished");
    let dnat = ForwardSpec {
        external_ip: Some("198.51.100.10".into()),
        external_port: Some("8080".into()),
        internal_ip: Some("10.0.1.77".into()),
        internal_port: Some("80".into()),
        ip_protocol: Some("TCP".into()),
        name: None,
    };
    let r: Result<String, Refused> =
        cp.transact(|c, _| Ok(c.create_forward_entry("cn-shanghai", "ftb-ngw-t", &dnat)?.0));
    let fid = r.unwrap();
    // A refused change leaves the saved state and the table alone.
    let generation = cp.cell().generation();
    let r: Result<String, Refused> =
        cp.transact(|c, _| Ok(c.create_forward_entry("cn-shanghai", "ftb-ngw-t", &dnat)?.0));
    assert!(matches!(r, Err(Refused::Cloud(_))), "{r:?}");
    assert_eq!(cp.cell().generation(), generation);
    let saved = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
    let saved: Cloud = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved, cp.with_cloud(Cloud::clone));
    drop(cp);
    // A restart on the same directory starts from the saved entries, not from `initial`.
    let cp = ControlPlane::new(initial, &opts).unwrap();
    cp.with_cloud(|c| {
        assert_eq!(c.snat_entries.len(), 1);
        assert_eq!(c.snat_entries[0].id, sid);
        assert_eq!(c.forward_entries.len(), 1);
        assert_eq!(c.forward_entries[0].id, fid);
    });
    // And it goes on numbering from where it was.
    let r: Result<(), Refused> = cp.transact(|c, _| {
        c.delete_forward_entry("cn-shanghai", "ftb-ngw-t", &fid)?;
        let (again, _) = c.create_forward_entry("cn-shanghai", "ftb-ngw-t", &dnat)?;
        assert_ne!(again, fid);
        Ok(())
    });
    r.unwrap();
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the table `cp` published sends a UDP packet from the internet to `eip`: the verdict
/// and the destination it leaves with.
fn reached(cp: &ControlPlane, eip: Ipv4Addr) -> (crate::engine::Verdict, Ipv4Addr) {
    use crate::engine::{Engine, PacketFlags, Side};
    let mut e = Engine::new(cp.cell().load().1);
    let pkt = crate::wire::build::udp(ip("203.0.113.7"), 40000, eip, 80, b"x");
    let mut buf = vec![0u8; 640];
    buf[..pkt.len()].copy_from_slice(&pkt);
    let v = e.process(
        real_ns(),
        Side::Internet,
        &mut buf,
        pkt.len(),
        PacketFlags::default(),
    );
    (v, Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]))
}

#[test]
fn a_havip_a_guest_claimed_stays_with_it_after_a_restart() {
    use crate::cloud::havip::HaVipSpec;
    use crate::engine::{Side, Verdict};
    let dir = temp_dir("havip");
    let opts = Options {
        state_dir: Some(dir.clone()),
        table: TableExtras::default(),
    };
    // i-web (eni-web0) and i-b (eni-b0, 10.0.1.11) on a HaVip at 10.0.1.100, i-web holding
    // it; eip-web on the HaVip. No transition: settled at once.
    let now = real_ns();
    let mut initial = crate::cloud::fixture::web(0, now);
    initial.add_instance(crate::cloud::fixture::instance(
        "i-b",
        InstanceStatus::Running,
    ));
    initial.add_eni(crate::cloud::fixture::eni(
        "eni-b0",
        "10.0.1.11",
        true,
        Some("i-b"),
    ));
    let spec = HaVipSpec {
        vswitch: "vsw-a".into(),
        ip_address: Some("10.0.1.100".into()),
        ..HaVipSpec::default()
    };
    let (hv, _) = initial.create_havip(now, "cn-shanghai", &spec).unwrap();
    for i in ["i-web", "i-b"] {
        initial
            .associate_havip("cn-shanghai", &hv, i, None)
            .unwrap();
    }
    initial
        .associate(
            now,
            &Associate {
                allocation_id: "eip-web".into(),
                instance_id: hv.clone(),
                bind_type: BindType::HaVip,
                mode: AssociationMode::Nat,
                private_ip: None,
            },
        )
        .unwrap();
    initial.handle_timeout(now);
    let (vip, eip) = (ip("10.0.1.100"), ip("198.51.100.10"));
    let (web0, b0) = (initial.enis["eni-web0"].index, initial.enis["eni-b0"].index);

    let cp = ControlPlane::new(initial.clone(), &opts).unwrap();
    assert_eq!(reached(&cp, eip), (Verdict::Forward(Side::Eni(web0)), vip));
    // i-b's guest configures the address (keepalived becoming master).
    let generation = cp.cell().generation();
    let r: Result<usize, Refused> = cp.transact(|c, _| Ok(c.claim_havip("i-b", vip).len()));
    assert_eq!(r.unwrap(), 1, "one HaVip moved");
    assert!(cp.cell().generation() > generation, "republished");
    assert_eq!(reached(&cp, eip), (Verdict::Forward(Side::Eni(b0)), vip));
    drop(cp);

    // A restart on the same directory: i-b still holds it, and the first table says so.
    let cp = ControlPlane::new(initial, &opts).unwrap();
    cp.with_cloud(|c| {
        assert_eq!(c.havips[&hv].associated_instances, ["i-b", "i-web"]);
        let (enis, eips) = c.dataplane();
        let on_eip = eips.iter().find(|e| e.address == eip).unwrap();
        let a = on_eip.association.unwrap();
        assert_eq!((a.eni, a.private_ip), (b0, Some(vip)));
        let carries = |id| {
            enis.iter()
                .find(|e| e.id == id)
                .is_some_and(|e| e.private_ips.contains(&vip))
        };
        assert!(carries(b0) && !carries(web0), "only the holder carries it");
    });
    assert_eq!(cp.cell().load().1.nat_eip_of(vip), Some(eip));
    assert_eq!(reached(&cp, eip), (Verdict::Forward(Side::Eni(b0)), vip));
    // And the lab's failover moves it back, saved as well.
    let r: Result<Vec<_>, Refused> = cp.transact(|c, _| Ok(c.fail_over_havip(&hv, "i-web")?));
    assert_eq!(r.unwrap().len(), 1);
    assert_eq!(reached(&cp, eip), (Verdict::Forward(Side::Eni(web0)), vip));
    let saved = Store::open(&dir).unwrap().get("cloud").unwrap().unwrap();
    let saved: Cloud = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved.havips[&hv].associated_instances, ["i-web", "i-b"]);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}
