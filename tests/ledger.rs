//! The ledger suite: every rule of the `Ledger` trait, on the embedded redb ledger here and on
//! a real PostgreSQL (tests/common/pg.rs) in the child of `on_postgres`, where the "two nodes"
//! of a test are two `PgLedger`s on one database (on redb, one ledger: one node).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::sync::{Arc, Barrier};

use matter_est::Error;
use matter_est::config::StoreConfig;
use matter_est::revocation::RevocationReason;
use matter_est::store::{
    self, Admission, CertQuery, Committed, CrlRecord, DacRecord, Decision, HeldRequest, HeldState,
    Ledger, Position, RevokedEntry, Status, TokenRecord, TokenState,
};

use common::pg;

#[test]
fn on_postgres() {
    // The migration and schema tests start their own servers.
    pg::rerun_on_postgres("on_postgres", &["migrate_", "schema_"]);
}

/// A fresh ledger (its directory kept alive with it) and a second node on the same one.
struct Under {
    _dir: tempfile::TempDir,
    a: Arc<dyn Ledger>,
    b: Arc<dyn Ledger>,
    store: StoreConfig,
}

fn ledger() -> Under {
    let dir = tempfile::tempdir().unwrap();
    let store = match pg::suite() {
        None => StoreConfig::Redb(dir.path().join("l.redb")),
        Some(server) => {
            let db = server.create_database();
            let text = format!(
                "{}\n[labels.x]\npai = \"p.pem\"\nsigner = {{ file = \"k.pem\" }}\n",
                pg::store_toml(server.port, &db, dir.path())
            );
            matter_est::config::Config::parse(&dir.path().join("c.toml"), &text)
                .unwrap()
                .store
        }
    };
    let a = store::open_store(&store).unwrap();
    let b = match &store {
        StoreConfig::Redb(_) => a.clone(),
        StoreConfig::Postgres(_) => store::open_store(&store).unwrap(),
    };
    Under {
        _dir: dir,
        a,
        b,
        store,
    }
}

fn record(serial: u8, subject: &str, label: &str) -> DacRecord {
    keyed(vec![serial], subject, label, serial)
}

/// A record whose DER carries a P-256 key made of `key` bytes (the repeat rule compares keys).
fn keyed(serial: Vec<u8>, subject: &str, label: &str, key: u8) -> DacRecord {
    let mut der = vec![0x30, 0];
    der.extend_from_slice(&matter_est::asn1::p256_spki(&[key; 65]));
    DacRecord {
        serial,
        label: label.into(),
        issuer_key: vec![9; 20],
        subject: subject.into(),
        subject_der: subject.as_bytes().to_vec(),
        vid: 0xfff1,
        pid: 0x8000,
        requester: "test".into(),
        issued_at: 1,
        der,
        status: Status::Issued,
        renews: None,
        server_keygen: false,
    }
}

fn quota(n: u64) -> Admission {
    Admission {
        quota: Some(n),
        ..Admission::default()
    }
}

#[test]
fn uniqueness_quota_renewal_revocation_and_crl() {
    let u = ledger();
    let ledger = &u.a;
    ledger.commit(&record(1, "a", "x"), &quota(2)).unwrap();
    assert!(matches!(
        ledger.commit(&record(1, "b", "x"), &quota(2)),
        Err(Error::Ledger(m)) if m.contains("serial")
    ));
    assert!(matches!(
        ledger.commit(&record(2, "a", "x"), &quota(2)),
        Err(Error::SubjectTaken { .. })
    ));
    // A renewal of another DAC does not take a subject it does not hold.
    let mut wrong = record(5, "a", "x");
    wrong.renews = Some(vec![77]);
    assert!(matches!(
        ledger.commit(&wrong, &quota(2)),
        Err(Error::SubjectTaken { .. })
    ));
    let mut renewal = record(3, "a", "x");
    renewal.renews = Some(vec![1]);
    assert_eq!(
        ledger.commit(&renewal, &quota(2)).unwrap(),
        Committed::Recorded
    );
    assert!(matches!(
        ledger.commit(&record(4, "c", "x"), &quota(2)),
        Err(Error::QuotaExhausted { quota: 2, .. })
    ));
    // Refusals changed nothing.
    assert_eq!(ledger.count("x").unwrap(), 2);
    assert!(ledger.by_serial(&[2]).unwrap().is_none());
    assert!(ledger.by_serial(&[4]).unwrap().is_none());
    assert!(ledger.by_serial(&[5]).unwrap().is_none());
    // An uncounted renewal does not use the quota but is refused past a full one.
    let mut uncounted = record(6, "d", "y");
    uncounted.renews = None;
    let free = Admission {
        quota: Some(1),
        uncounted: true,
        ..Admission::default()
    };
    ledger.commit(&uncounted, &free).unwrap();
    assert_eq!(ledger.count("y").unwrap(), 0);

    let revoked = ledger
        .revoke(&[1], RevocationReason::KeyCompromise, 5, "test")
        .unwrap();
    assert_eq!(revoked.serial, [1]);
    assert!(matches!(revoked.status, Status::Revoked { at: 5, .. }));
    assert!(matches!(
        u.b.revoke(&[1], RevocationReason::Superseded, 6, "test"),
        Err(Error::AlreadyRevoked { .. })
    ));
    assert!(matches!(
        ledger.revoke(&[99], RevocationReason::Superseded, 6, "test"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        ledger.revoked("x").unwrap(),
        [RevokedEntry {
            serial: vec![1],
            at: 5,
            reason: RevocationReason::KeyCompromise
        }]
    );
    assert!(ledger.revoked("y").unwrap().is_empty());

    // cRLNumbers only grow, across nodes too.
    assert_eq!(ledger.next_crl_number("x").unwrap(), 1);
    assert_eq!(u.b.next_crl_number("x").unwrap(), 2);
    assert_eq!(ledger.next_crl_number("y").unwrap(), 1);
    let crl = CrlRecord {
        number: 2,
        this_update: 1,
        next_update: 2,
        entries: 1,
        der: vec![0x30, 0],
    };
    ledger.put_crl("x", &crl).unwrap();
    assert!(u.b.put_crl("x", &crl).is_err(), "not newer");
    assert_eq!(u.b.crl("x").unwrap(), Some(crl));
    assert_eq!(ledger.crl("y").unwrap(), None);

    let list = u.b.list(0, 10).unwrap();
    assert_eq!(
        list.iter().map(|r| r.serial[0]).collect::<Vec<_>>(),
        [1, 3, 6]
    );
    assert_eq!(u.b.list(1, 1).unwrap()[0].serial, [3]);
    assert!(matches!(list[0].status, Status::Revoked { .. }));
    let holder = u.b.by_subject(&[9; 20], b"a").unwrap();
    assert_eq!(holder.map(|r| r.serial), Some(vec![3]));
    assert_eq!(u.b.by_subject(&[8; 20], b"a").unwrap(), None);

    // Re-key marks: once, never on a revoked DAC, unknown serials not found.
    assert!(ledger.rekey_mark(&[3]).unwrap().is_none());
    ledger.mark_rekey(&[3], 7, "op").unwrap();
    assert_eq!(u.b.rekey_mark(&[3]).unwrap(), Some((7, "op".to_string())));
    assert!(matches!(
        u.b.mark_rekey(&[3], 8, "op"),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        ledger.mark_rekey(&[1], 8, "op"),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        ledger.mark_rekey(&[42], 8, "op"),
        Err(Error::NotFound(_))
    ));

    // The audit chain holds every change, in order, and verifies.
    let (count, head) = ledger.audit_verify(None).unwrap().expect("intact");
    let events: Vec<String> = ledger
        .audit_records(0, 100)
        .unwrap()
        .iter()
        .map(|r| r.event.name().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "enrollment_granted",
            "enrollment_granted",
            "enrollment_granted",
            "revocation",
            "crl_issued",
            "rekey_marked"
        ]
    );
    assert_eq!(count, 6);
    assert_eq!(head, ledger.audit_head().unwrap());
    assert_eq!(head.map(|h| h.seq), Some(5));
}

#[test]
fn a_repeat_gets_the_dac_on_record_from_either_node() {
    let u = ledger();
    let first = keyed(vec![1, 1], "CN=r", "x", 7);
    u.a.commit(&first, &quota(5)).unwrap();
    // The same key asking again (a new serial, as a retry signs anew): the DAC on record.
    let again = keyed(vec![1, 2], "CN=r", "x", 7);
    for node in [&u.a, &u.b] {
        match node.commit(&again, &quota(5)).unwrap() {
            Committed::AlreadyOnRecord(r) => assert_eq!(*r, first),
            other => panic!("{other:?}"),
        }
    }
    // Another key: refused.
    assert!(matches!(
        u.b.commit(&keyed(vec![1, 3], "CN=r", "x", 8), &quota(5)),
        Err(Error::SubjectTaken { .. })
    ));
    assert_eq!(u.a.count("x").unwrap(), 1);
    assert!(u.a.by_serial(&[1, 2]).unwrap().is_none());
}

fn held(id: &str, requester: &str) -> HeldRequest {
    HeldRequest {
        id: id.into(),
        label: "x".into(),
        subject: "CN=held".into(),
        csr_sha256: "00".into(),
        requester: requester.into(),
        kind: "enrollment".into(),
        requested_at: 10,
        expires_at: 20,
        decision: None,
    }
}

fn decision(approved: bool, at: i64, by: &str) -> Decision {
    Decision {
        approved,
        at,
        by: by.into(),
        reason: (!approved).then(|| "not on the line plan".to_string()),
    }
}

/// Manual approval (RFC 7030 §4.2.3): a request is held once (the first one stays), decided
/// once, even by two operators on two nodes at the same moment, and never after it expired.
#[test]
fn held_requests_are_kept_once_and_decided_once_on_either_node() {
    let u = ledger();
    let req = held("h1", "client:cn:gw");
    assert_eq!(u.a.hold(&req).unwrap(), req);
    assert_eq!(u.b.hold(&held("h1", "someone else")).unwrap(), req);
    assert!(matches!(
        u.b.decide("h1", &decision(true, 20, "op")),
        Err(Error::BadRequest(m)) if m.contains("expired")
    ));
    assert!(matches!(
        u.a.decide("nope", &decision(true, 11, "op")),
        Err(Error::NotFound(_))
    ));
    // Two operators, one on each node, at once: one decision stands.
    let barrier = Arc::new(Barrier::new(2));
    let outcomes: Vec<_> = [(u.a.clone(), true, "op-a"), (u.b.clone(), false, "op-b")]
        .into_iter()
        .map(|(node, approved, by)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                node.decide("h1", &decision(approved, 12, by))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let stood: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(stood.len(), 1, "{outcomes:?}");
    let refused = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
    assert!(
        matches!(refused, Error::BadRequest(m) if m.contains("already")),
        "{refused}"
    );
    let kept = u.a.held("h1").unwrap().unwrap();
    assert_eq!(&kept, stood[0]);
    assert!(matches!(
        kept.state(100),
        HeldState::Approved | HeldState::Rejected(_)
    ));
    u.b.hold(&HeldRequest {
        requested_at: 5,
        ..held("h0", "client:cn:gw")
    })
    .unwrap();
    let ids: Vec<String> = u.b.held_list().unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, ["h0", "h1"], "oldest first");
    let names: Vec<&str> =
        u.a.audit_records(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.event.name())
            .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "enrollment_held");
    assert!(["request_approved", "request_rejected"].contains(&names[1]));
    assert_eq!(names[2], "enrollment_held");
}

/// Pruning held requests (`Ledger::prune_held`): those settled (decided, or expired undecided)
/// before the cut-off go, on either node; a waiting one and those settled since stay; the audit
/// chain keeps every record; the same id can then be held anew, undecided.
#[test]
fn settled_held_requests_are_pruned_and_can_be_held_anew() {
    let u = ledger();
    // Expires at 20 undecided.
    u.a.hold(&held("expired", "client:cn:gw")).unwrap();
    // Decided at 12 and at 30.
    u.a.hold(&held("rejected", "client:cn:gw")).unwrap();
    u.a.decide("rejected", &decision(false, 12, "op")).unwrap();
    u.a.hold(&held("expired-too", "client:cn:gw")).unwrap();
    u.a.hold(&HeldRequest {
        expires_at: 1_000,
        ..held("late", "client:cn:gw")
    })
    .unwrap();
    u.a.decide("late", &decision(true, 30, "op")).unwrap();
    // Waiting until 1,000.
    u.a.hold(&HeldRequest {
        expires_at: 1_000,
        ..held("waiting", "client:cn:gw")
    })
    .unwrap();
    let audited = u.a.audit_records(0, 100).unwrap().len();
    let ids = |node: &Arc<dyn Ledger>| -> Vec<String> {
        node.held_list()
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect()
    };
    // Nothing settled before 12.
    assert_eq!(u.b.prune_held(12).unwrap(), 0);
    assert_eq!(ids(&u.a).len(), 5);
    // Before 25: the rejection (12) and both expiries (20) go.
    assert_eq!(u.b.prune_held(25).unwrap(), 3);
    assert_eq!(ids(&u.a), ["late", "waiting"]);
    assert!(u.a.held("rejected").unwrap().is_none());
    // Far later: the approval goes, the waiting request (settles at 1,000) stays until then.
    assert_eq!(u.a.prune_held(999).unwrap(), 1);
    assert_eq!(ids(&u.b), ["waiting"]);
    assert_eq!(u.a.audit_records(0, 100).unwrap().len(), audited);
    // The rejected request's CSR again: held anew, undecided.
    let again = HeldRequest {
        requested_at: 2_000,
        expires_at: 3_000,
        ..held("rejected", "client:cn:gw")
    };
    assert_eq!(u.b.hold(&again).unwrap(), again);
    assert_eq!(again.state(2_001), HeldState::Waiting);
}

/// The dashboard's window: the newest DACs, of a label or of all, newest first.
#[test]
fn recent_reads_newest_first_from_either_node() {
    let u = ledger();
    for (serial, at, label) in [(1, 30, "x"), (2, 10, "y"), (3, 20, "x"), (4, 40, "y")] {
        let mut r = record(serial, &format!("CN=s{serial}"), label);
        r.issued_at = at;
        u.a.commit(&r, &Admission::default()).unwrap();
    }
    let serials = |rs: Vec<DacRecord>| rs.iter().map(|r| r.serial[0]).collect::<Vec<_>>();
    for node in [&u.a, &u.b] {
        assert_eq!(serials(node.recent(None, 10).unwrap()), [4, 1, 3, 2]);
        assert_eq!(serials(node.recent(None, 2).unwrap()), [4, 1]);
        assert_eq!(serials(node.recent(Some("x"), 10).unwrap()), [1, 3]);
        assert!(node.recent(Some("z"), 10).unwrap().is_empty());
    }
}

#[test]
fn tokens_are_spent_once_and_revoked_once() {
    let u = ledger();
    let token = |id: &str, expires_at: Option<i64>| TokenRecord {
        id: id.into(),
        label: "x".into(),
        pid: Some(0x8000),
        created_at: 1,
        spent_by: None,
        expires_at,
        cn: Some("dev-1".into()),
        revoked_at: None,
    };
    u.a.put_token(&[1; 32], &token("t1", None)).unwrap();
    u.a.put_token(&[2; 32], &token("t2", Some(1))).unwrap();
    u.a.put_token(&[3; 32], &token("t3", None)).unwrap();
    assert!(
        u.b.put_token(&[4; 32], &token("t1", None)).is_err(),
        "id taken"
    );
    assert_eq!(u.b.token(&[1; 32]).unwrap(), Some(token("t1", None)));
    assert_eq!(u.b.token(&[9; 32]).unwrap(), None);
    let spend = |id: &str| Admission {
        token: Some(id.into()),
        ..Admission::default()
    };
    u.a.commit(&record(1, "a", "x"), &spend("t1")).unwrap();
    assert!(matches!(
        u.b.commit(&record(2, "b", "x"), &spend("t1")),
        Err(Error::Unauthenticated(m)) if m.contains("already used")
    ));
    assert!(matches!(
        u.b.commit(&record(3, "c", "x"), &spend("t2")),
        Err(Error::Unauthenticated(m)) if m.contains("expired")
    ));
    assert!(matches!(
        u.b.commit(&record(4, "d", "x"), &spend("nope")),
        Err(Error::Unauthenticated(m)) if m.contains("unknown")
    ));
    // Revoked: once; a spent one is not revoked; unknown ids are not found.
    assert_eq!(u.b.revoke_token("t3", 9, "op").unwrap().revoked_at, Some(9));
    assert!(matches!(
        u.a.revoke_token("t3", 9, "op"),
        Err(Error::BadRequest(_))
    ));
    assert!(
        matches!(u.a.revoke_token("t1", 9, "op"), Err(Error::BadRequest(m)) if m.contains("spent"))
    );
    assert!(matches!(
        u.a.revoke_token("zz", 9, "op"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        u.a.commit(&record(5, "e", "x"), &spend("t3")),
        Err(Error::Unauthenticated(m)) if m.contains("revoked")
    ));
    let tokens = u.b.tokens().unwrap();
    assert_eq!(
        tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2", "t3"]
    );
    assert_eq!(tokens[0].state(5), TokenState::Spent(vec![1]));
    assert_eq!(tokens[1].state(5), TokenState::Expired);
    assert_eq!(tokens[2].state(5), TokenState::Revoked);
    assert_eq!(u.a.count("x").unwrap(), 1);
    assert!(u.a.audit_verify(None).unwrap().is_ok());
}

/// Many threads on two nodes for the last slots of a quota, one subject, and one token: the
/// ledger admits exactly what its rules allow, and the chain stays one sequence.
#[test]
fn concurrent_commits_on_two_nodes_keep_every_rule() {
    let u = ledger();
    // 5 slots left of 25.
    for i in 0..20u8 {
        u.a.commit(&record(i, &format!("pre-{i}"), "x"), &quota(25))
            .unwrap();
    }
    u.a.put_token(
        &[7; 32],
        &TokenRecord {
            id: "tok".into(),
            label: "y".into(),
            pid: None,
            created_at: 1,
            spent_by: None,
            expires_at: None,
            cn: None,
            revoked_at: None,
        },
    )
    .unwrap();
    let threads = 60;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let node = if i % 2 == 0 { u.a.clone() } else { u.b.clone() };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let serial = |k: u8| vec![k, i as u8, 0xaa];
                // The quota: distinct subjects.
                let quota_result =
                    node.commit(&keyed(serial(1), &format!("q-{i}"), "x", 1), &quota(25));
                // One subject, a different key each.
                let subject_result = node.commit(
                    &keyed(serial(2), "CN=one", "z", (i % 250) as u8 + 2),
                    &Admission::default(),
                );
                // One token.
                let token_result = node.commit(
                    &keyed(serial(3), &format!("t-{i}"), "y", 1),
                    &Admission {
                        token: Some("tok".into()),
                        ..Admission::default()
                    },
                );
                (quota_result, subject_result, token_result)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = |r: &matter_est::Result<Committed>| matches!(r, Ok(Committed::Recorded));
    assert_eq!(results.iter().filter(|r| ok(&r.0)).count(), 5, "quota");
    assert!(
        results
            .iter()
            .all(|r| ok(&r.0) || matches!(r.0, Err(Error::QuotaExhausted { quota: 25, .. })))
    );
    assert_eq!(results.iter().filter(|r| ok(&r.1)).count(), 1, "subject");
    assert!(
        results
            .iter()
            .all(|r| ok(&r.1) || matches!(r.1, Err(Error::SubjectTaken { .. })))
    );
    assert_eq!(results.iter().filter(|r| ok(&r.2)).count(), 1, "token");
    assert!(
        results
            .iter()
            .all(|r| ok(&r.2) || matches!(r.2, Err(Error::Unauthenticated(_))))
    );
    assert_eq!(u.b.count("x").unwrap(), 25);
    assert_eq!(u.b.count("z").unwrap(), 1);
    assert_eq!(u.b.count("y").unwrap(), 1);
    // The chain: one sequence with every grant (20 + 5 + 1 + 1, and token_created and
    // token_spent), verified from either node.
    let (count, head) = u.b.audit_verify(None).unwrap().expect("intact");
    assert_eq!(count, 20 + 1 + 5 + 1 + 1 + 1);
    assert_eq!(u.a.audit_verify(head).unwrap().expect("intact").0, count);
}

#[test]
fn inventory_pages_and_filters() {
    let u = ledger();
    for i in 0..30u8 {
        let mut r = record(
            i,
            &format!("CN=dev-{i:02}"),
            if i % 3 == 0 { "a" } else { "b" },
        );
        r.issued_at = 100 + i64::from(i / 2);
        r.pid = 0x8000 + u16::from(i % 2);
        u.a.commit(&r, &Admission::default()).unwrap();
    }
    u.a.revoke(&[4], RevocationReason::Unspecified, 1, "t")
        .unwrap();
    let all = |q: CertQuery| {
        let mut out = Vec::new();
        let mut q = q;
        loop {
            let page = u.b.list_page(&q).unwrap();
            out.extend(page.records.iter().map(|(_, r)| r.serial[0]));
            match page.next {
                Some(next) => q.after = Some(next),
                None => return out,
            }
        }
    };
    let page = |limit| CertQuery {
        limit,
        ..CertQuery::default()
    };
    assert_eq!(all(page(7)), (0..30).collect::<Vec<u8>>());
    assert_eq!(
        all(CertQuery {
            label: Some("a".into()),
            ..page(4)
        }),
        (0..30).filter(|i| i % 3 == 0).collect::<Vec<u8>>()
    );
    assert_eq!(
        all(CertQuery {
            since: Some(105),
            until: Some(107),
            pid: Some(0x8001),
            ..page(2)
        }),
        [11, 13]
    );
    assert_eq!(
        all(CertQuery {
            revoked: Some(true),
            ..page(3)
        }),
        [4]
    );
    assert_eq!(
        all(CertQuery {
            contains: Some("dev-2".into()),
            label: Some("b".into()),
            ..page(3)
        }),
        [20, 22, 23, 25, 26, 28, 29]
    );
    // A cursor in the middle of a time (two records per second).
    let first = u.b.list_page(&page(3)).unwrap();
    assert_eq!(
        first.next,
        Some(Position {
            time: 101,
            seq: first.records[2].0
        })
    );
}

#[test]
fn refusals_and_config_loads_are_audited_in_order() {
    let u = ledger();
    for i in 0..5 {
        let node = if i % 2 == 0 { &u.a } else { &u.b };
        node.audit(matter_est::store::audit::AuditEvent::ConfigLoaded {
            path: format!("/c{i}"),
            sha256: "00".into(),
        });
        // A write waits for what was queued before it on that node.
        node.commit(&record(i, &format!("s{i}"), "x"), &Admission::default())
            .unwrap();
    }
    let records = u.a.audit_records(0, 100).unwrap();
    assert_eq!(records.len(), 10);
    assert!(records.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    assert_eq!(u.a.audit_records(8, 100).unwrap().len(), 2);
    assert!(u.b.audit_verify(None).unwrap().is_ok());
    // A head the chain does not reach is named.
    let mut beyond = u.a.audit_head().unwrap().unwrap();
    beyond.seq += 3;
    assert!(u.a.audit_verify(Some(beyond)).unwrap().is_err());
    drop(u.store);
}

/// `matter-est ledger migrate`: redb → PostgreSQL → redb gives back every record (same counts
/// and digest), the audit chain verifies on each copy, and a non-empty target is refused.
#[test]
fn migrate_redb_to_postgres_and_back() {
    use std::process::Command;
    let env = common::DevEnv::new(|t| t);
    let (issuer, ledger) = env.issuer();
    let mut serials = Vec::new();
    for i in 0..6 {
        let (der, _) = common::csr(&common::subject(
            Some(&format!("m-{i}")),
            Some("FFF1"),
            Some("8000"),
        ));
        let req = matter_est::csr::parse(&der).unwrap();
        let opts = matter_est::issuance::IssueOptions {
            requester: "test".into(),
            ..Default::default()
        };
        serials.push(issuer.issue("dev", &req, &opts).unwrap().dac.serial);
    }
    ledger
        .revoke(&serials[0], RevocationReason::KeyCompromise, 5, "op")
        .unwrap();
    ledger.mark_rekey(&serials[1], 6, "op").unwrap();
    matter_est::policy::create_token(ledger.as_ref(), "dev", None).unwrap();
    let n = ledger.next_crl_number("dev").unwrap();
    ledger
        .put_crl(
            "dev",
            &CrlRecord {
                number: n,
                this_update: 1,
                next_update: 2,
                entries: 1,
                der: vec![0x30, 0],
            },
        )
        .unwrap();
    ledger.hold(&held("waiting", "client:cn:gw")).unwrap();
    ledger
        .hold(&HeldRequest {
            requested_at: 11,
            ..held("decided", "token:t1")
        })
        .unwrap();
    ledger
        .decide("decided", &decision(false, 12, "op"))
        .unwrap();
    let source = store::migrate::summarize(&ledger.export().unwrap());
    assert_eq!(source.dacs, 6);
    assert_eq!(source.held, 2);
    assert!(source.audit >= 10, "{source:?}");
    ledger.close();
    drop((issuer, ledger));

    let server = pg::PgServer::start();
    let db = server.create_database();
    let a = env.path(matter_est::profile::dev::files::CONFIG);
    let text = std::fs::read_to_string(&a).unwrap();
    let b = env.path("on-postgres.toml");
    std::fs::write(
        &b,
        pg::adopt_to(text.clone(), env.dir.path(), server.port, &db),
    )
    .unwrap();
    let c = env.path("back.toml");
    std::fs::write(&c, text.replace("ledger.redb", "back.redb")).unwrap();
    let migrate = |from: &std::path::Path, to: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .args(["ledger", "migrate", "--from"])
            .arg(from)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };
    for (from, to) in [(&a, &b), (&b, &c)] {
        let out = migrate(from, to);
        common::assert_success(&out);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("digest {}", source.digest)),
            "{said}"
        );
        assert!(said.contains("6 DACs"), "{said}");
        let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .args(["audit", "verify", "--config"])
            .arg(to)
            .output()
            .unwrap();
        common::assert_success(&out);
    }
    // Into a ledger that holds records: refused, nothing changes.
    let out = migrate(&a, &b);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    for config in [&b, &c] {
        let config = matter_est::config::Config::load(config).unwrap();
        let copy = store::open(&config).unwrap();
        assert_eq!(store::migrate::summarize(&copy.export().unwrap()), source);
        // The copy works as a ledger: it goes on where the source stopped.
        assert_eq!(copy.next_crl_number("dev").unwrap(), n + 1);
        assert!(matches!(
            copy.revoke(&serials[0], RevocationReason::Superseded, 9, "op"),
            Err(Error::AlreadyRevoked { .. })
        ));
        assert!(copy.rekey_mark(&serials[1]).unwrap().is_some());
        assert!(matches!(
            copy.held("decided").unwrap().unwrap().state(13),
            HeldState::Rejected(_)
        ));
        assert!(matches!(
            copy.decide("decided", &decision(true, 13, "op")),
            Err(Error::BadRequest(_))
        ));
        copy.close();
    }
}

/// Nodes starting together apply the schema once (under the advisory lock); a node refuses a
/// database whose schema is newer than it knows.
#[test]
fn schema_is_migrated_once_and_a_newer_one_refused() {
    let server = pg::PgServer::start();
    let db = server.create_database();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[labels.x]\npai = \"p.pem\"\nsigner = {{ file = \"k.pem\" }}\n",
        pg::store_toml(server.port, &db, dir.path())
    );
    let config = matter_est::config::Config::parse(&dir.path().join("c.toml"), &text).unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let store = config.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store::open_store(&store).unwrap()
            })
        })
        .collect();
    let nodes: Vec<_> = nodes.into_iter().map(|n| n.join().unwrap()).collect();
    assert_eq!(
        server.psql(&db, "SELECT count(*), max(version) FROM matter_est_schema"),
        {
            // One row per migration, each applied once.
            let v = matter_est::store::postgres::PgLedger::known_schema_version();
            format!("{v}|{v}")
        }
    );
    nodes[0]
        .commit(&record(1, "a", "x"), &Admission::default())
        .unwrap();
    drop(nodes);
    server.psql(&db, "INSERT INTO matter_est_schema (version) VALUES (999)");
    let refused = store::open_store(&config.store).err().expect("refused");
    assert!(
        refused
            .to_string()
            .contains("schema is version 999, newer than this matter-est knows"),
        "{refused}"
    );
}

/// A database an older node left at schema 2, with a DAC on record: this build migrates it
/// (the issuance function of schema 3) and its issuances keep every rule against what is
/// already there: the serial, the subject (a repeat answered, another key refused, a renewal
/// taking it over), the quota; a call the function cannot complete writes nothing.
#[test]
fn schema_2_database_is_migrated_to_the_current_one() {
    let server = pg::PgServer::start();
    let db = server.create_database();
    server.psql(
        &db,
        &format!(
            "CREATE TABLE matter_est_schema (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now());\n{}\n{}\n\
             INSERT INTO matter_est_schema (version) VALUES (1), (2);",
            include_str!("../src/store/postgres/migrations/0001_ledger.sql"),
            include_str!("../src/store/postgres/migrations/0002_held.sql"),
        ),
    );
    // What a schema-2 node wrote for one issuance.
    let old = keyed(vec![1], "a", "x", 1);
    let hex = matter_est::asn1::hex;
    server.psql(
        &db,
        &format!(
            "INSERT INTO dacs (serial, label, issuer_key, subject, subject_der, vid, pid, \
             requester, issued_at, der) VALUES ('\\x{}', 'x', '\\x{}', 'a', '\\x{}', {}, {}, \
             'test', 1, '\\x{}');\n\
             INSERT INTO subjects (issuer_key, subject_der, holder) \
             SELECT issuer_key, subject_der, seq FROM dacs;\n\
             INSERT INTO labels (label, used) VALUES ('x', 1);",
            hex(&old.serial),
            hex(&old.issuer_key),
            hex(&old.subject_der),
            old.vid,
            old.pid,
            hex(&old.der),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[labels.x]\npai = \"p.pem\"\nsigner = {{ file = \"k.pem\" }}\n",
        pg::store_toml(server.port, &db, dir.path())
    );
    let config = matter_est::config::Config::parse(&dir.path().join("c.toml"), &text).unwrap();
    let ledger = store::open_store(&config.store).unwrap();
    let known = matter_est::store::postgres::PgLedger::known_schema_version();
    assert!(known >= 3);
    assert_eq!(
        server.psql(
            &db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM matter_est_schema"
        ),
        (1..=known)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(ledger.by_serial(&[1]).unwrap(), Some(old.clone()));

    assert!(matches!(
        ledger.commit(&keyed(vec![1], "b", "x", 2), &quota(3)),
        Err(Error::Ledger(m)) if m.contains("serial")
    ));
    match ledger
        .commit(&keyed(vec![2], "a", "x", 1), &quota(3))
        .unwrap()
    {
        Committed::AlreadyOnRecord(r) => assert_eq!(*r, old),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ledger.commit(&keyed(vec![3], "a", "x", 3), &quota(3)),
        Err(Error::SubjectTaken { .. })
    ));
    let mut renewal = keyed(vec![4], "a", "x", 4);
    renewal.renews = Some(vec![1]);
    assert_eq!(
        ledger.commit(&renewal, &quota(3)).unwrap(),
        Committed::Recorded
    );
    assert_eq!(
        ledger
            .by_subject(&old.issuer_key, b"a")
            .unwrap()
            .map(|r| r.serial),
        Some(vec![4])
    );
    ledger
        .commit(&keyed(vec![5], "c", "x", 5), &quota(3))
        .unwrap();
    assert!(matches!(
        ledger.commit(&keyed(vec![6], "d", "x", 6), &quota(3)),
        Err(Error::QuotaExhausted { quota: 3, .. })
    ));
    assert_eq!(ledger.count("x").unwrap(), 3);

    // An error the function does not name (here a CHECK on the vendor id, which the ledger
    // never sends) fails the whole call, and with it the writer's group: nothing is written.
    assert_eq!(
        server.psql(
            &db,
            "CREATE TEMP TABLE r (s text); \
             DO $$ BEGIN \
               PERFORM matter_est_commit_dacs(ARRAY['\\x07'::bytea], ARRAY['x'], \
                 ARRAY['\\x00'::bytea], ARRAY['e'], ARRAY['\\x65'::bytea], ARRAY[70000], \
                 ARRAY[1], ARRAY['test'], ARRAY[1::bigint], ARRAY['\\x00'::bytea], \
                 ARRAY[NULL::bigint], ARRAY[NULL::text], ARRAY[NULL::smallint], \
                 ARRAY[NULL::bytea], ARRAY[false], ARRAY[NULL::bigint], ARRAY[false], \
                 ARRAY[NULL::text], ARRAY['x']); \
             EXCEPTION WHEN OTHERS THEN INSERT INTO r VALUES (SQLSTATE); END $$; \
             SELECT s FROM r"
        ),
        "23514"
    );
    assert_eq!(
        server.psql(&db, "SELECT count(*) FROM dacs WHERE serial = '\\x07'"),
        "0"
    );
    assert!(ledger.audit_verify(None).unwrap().is_ok());
    // Schema 4: a wait on a label's count row answers its own statement timeout (see
    // schema_a_statement_timeout_fails_only_its_own_issuance); schema 5: the count is no
    // ON CONFLICT DO UPDATE; schema 6: one call per run (the checks above ran on it).
    assert_eq!(
        server.psql(
            &db,
            "SELECT prosrc LIKE '%WHEN query_canceled OR lock_not_available THEN%', \
             prosrc LIKE '%ON CONFLICT (label) DO UPDATE%' FROM pg_proc \
             WHERE proname = 'matter_est_commit_dacs'"
        ),
        "t|f"
    );
}

/// A PostgreSQL server of the test's own, a fresh database on it, and a ledger opened there with
/// one label; `edit` may change the `[store]` text first.
struct OwnPg {
    server: pg::PgServer,
    db: String,
    dir: tempfile::TempDir,
    ledger: Arc<dyn Ledger>,
}

fn own_pg(edit: impl FnOnce(String) -> String) -> OwnPg {
    let server = pg::PgServer::start();
    let db = server.create_database();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[labels.x]\npai = \"p.pem\"\nsigner = {{ file = \"k.pem\" }}\n",
        edit(pg::store_toml(server.port, &db, dir.path()))
    );
    let config = matter_est::config::Config::parse(&dir.path().join("c.toml"), &text).unwrap();
    let ledger = store::open_store(&config.store).unwrap();
    OwnPg {
        server,
        db,
        dir,
        ledger,
    }
}

/// Polls `sql` on `db` until it answers something other than "0" (10 s at most).
fn wait_for(server: &pg::PgServer, db: &str, sql: &str) {
    let started = std::time::Instant::now();
    while server.psql(db, sql) == "0" {
        assert!(started.elapsed().as_secs() < 10, "not seen in 10 s: {sql}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Another session holding `label`'s count row for `secs` seconds, in a thread of `scope`, by
/// `hold` (`FOR UPDATE`: a `SELECT ... FOR UPDATE`, as another node's run holds it before
/// counting; `UPDATE`: an update of the count, as that run holds it after); returns once the
/// session holds it.
fn hold_label_row<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    server: &'scope pg::PgServer,
    db: &'scope str,
    label: &str,
    hold: &str,
    secs: f64,
) -> std::thread::ScopedJoinHandle<'scope, String> {
    let take = match hold {
        "FOR UPDATE" => format!("SELECT used FROM labels WHERE label = '{label}' FOR UPDATE"),
        "UPDATE" => format!("UPDATE labels SET used = used WHERE label = '{label}'"),
        other => panic!("{other}"),
    };
    let sql = format!("BEGIN; {take}; SELECT pg_sleep({secs}); COMMIT;");
    let holder = scope.spawn(move || server.psql(db, &sql));
    wait_for(
        server,
        db,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
             AND query LIKE '%label = ''{label}''%'"
        ),
    );
    holder
}

/// A wait on a label's count row that another session holds fails that label's issuances only,
/// with 503 (`LedgerUnavailable`), after the statement timeout; the other issuances of the
/// group are recorded (schema 4). Whether the other session locked the row or updated it (as
/// another node's run does), and however many such waits one run has: each is bounded (the
/// node's `lock_timeout`), not only the first.
#[test]
fn schema_a_statement_timeout_fails_only_its_own_issuance() {
    let OwnPg {
        server, db, ledger, ..
    } = own_pg(|store_toml| {
        assert!(store_toml.contains("statement_timeout_ms = 10000"));
        store_toml.replace(
            "statement_timeout_ms = 10000",
            "statement_timeout_ms = 1000",
        )
    });
    ledger
        .commit(&record(1, "s0", "slow"), &Admission::default())
        .unwrap();
    ledger
        .commit(&record(4, "t0", "slow2"), &Admission::default())
        .unwrap();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        // Other sessions hold label slow's count row (updated) and slow2's (locked) for 5 s.
        hold_label_row(s, &server, &db, "slow", "UPDATE", 5.0);
        hold_label_row(s, &server, &db, "slow2", "FOR UPDATE", 5.0);
        // The first issuance on slow waits alone for 1 s; meanwhile one more on slow, one on
        // slow2 and five on fast queue up and go as one group, in which slow and slow2 wait
        // 1 s each.
        let first = ledger.submit(&record(2, "s1", "slow"), &Admission::default());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let second = ledger.submit(&record(3, "s2", "slow"), &Admission::default());
        let third = ledger.submit(&record(5, "t1", "slow2"), &Admission::default());
        let fast: Vec<_> = (0..5)
            .map(|i| {
                ledger.submit(
                    &record(10 + i, &format!("f{i}"), "fast"),
                    &Admission::default(),
                )
            })
            .collect();
        for slow in [first, second, third] {
            match slow.wait() {
                Err(Error::LedgerUnavailable { reason, .. }) => {
                    assert!(
                        reason.contains("57014") || reason.contains("55P03"),
                        "{reason}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        for f in fast {
            assert_eq!(f.wait().unwrap(), Committed::Recorded);
        }
        // Before the sessions let go.
        assert!(
            started.elapsed().as_secs_f64() < 4.5,
            "{:?}",
            started.elapsed()
        );
    });
    assert_eq!(ledger.count("fast").unwrap(), 5);
    assert_eq!(ledger.count("slow").unwrap(), 1);
    assert_eq!(ledger.count("slow2").unwrap(), 1);
    assert_eq!(ledger.by_serial(&[3]).unwrap(), None);
    assert_eq!(ledger.by_serial(&[5]).unwrap(), None);
    assert!(ledger.audit_verify(None).unwrap().is_ok());
}

/// `tls = "verify-full"`: the server's certificate must chain to `ca_file` and name the URL's
/// host; a login over TLS works, another CA or another name is refused with the reason.
#[test]
fn schema_over_tls_verify_full() {
    use std::process::Command;
    let openssl = |dir: &std::path::Path, args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out);
    };
    let certs = |dir: &std::path::Path, name: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.pem"),
                "-subj",
                &format!("/CN={name} test CA"),
                "-days",
                "2",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{name}-ca.pem"),
                "-CAkey",
                &format!("{name}-ca.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
    };
    let server = pg::PgServer::start_with(|dir| {
        certs(dir, "db");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("db.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("db.pem").display(),
            dir.join("db.key").display()
        )
    });
    let db = server.create_database();
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "other");
    std::fs::copy(
        server.dir.path().join("db-ca.pem"),
        dir.path().join("db-ca.pem"),
    )
    .unwrap();
    let open = |host: &str, ca: &str| {
        let text = format!(
            "{}\n[labels.x]\npai = \"p.pem\"\nsigner = {{ file = \"k.pem\" }}\n",
            pg::store_toml(server.port, &db, dir.path())
                .replace(
                    "tls = \"disable\"",
                    &format!("tls = \"verify-full\"\nca_file = \"{ca}\"")
                )
                .replace("@127.0.0.1:", &format!("@{host}:"))
        );
        let config = matter_est::config::Config::parse(&dir.path().join("c.toml"), &text).unwrap();
        store::open_store(&config.store)
    };
    let ledger = open("127.0.0.1", "db-ca.pem").unwrap();
    ledger
        .commit(&record(1, "a", "x"), &Admission::default())
        .unwrap();
    assert_eq!(ledger.count("x").unwrap(), 1);
    // The connection really is TLS.
    assert_eq!(
        server
            .psql(
                &db,
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'matter-est'"
            )
            .parse::<u32>()
            .unwrap()
            .min(1),
        1
    );
    drop(ledger);
    // Refused for good (not "unavailable, retry"), with rustls's reason.
    let wrong_ca = open("127.0.0.1", "other-ca.pem").err().expect("refused");
    assert!(
        matches!(&wrong_ca, Error::Ledger(m) if m.contains("UnknownIssuer")),
        "{wrong_ca}"
    );
    let wrong_name = open("localhost", "db-ca.pem").err().expect("refused");
    assert!(
        matches!(&wrong_name, Error::Ledger(m) if m.contains("not valid for name \"localhost\"")),
        "{wrong_name}"
    );
}

/// A proxy between the ledger and PostgreSQL that, once armed, cuts the connection carrying
/// the next `COMMIT`: after passing it on (the database commits, the answer is lost) or before
/// (the database never sees it).
struct CommitCutter {
    port: u16,
    armed: Arc<std::sync::Mutex<Option<bool>>>,
    cut: Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitCutter {
    fn start(upstream: u16) -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Arc<std::sync::Mutex<Option<bool>>> = Arc::default();
        let cut = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (armed2, cut2) = (armed.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                let (armed, cut) = (armed2.clone(), cut2.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    // The simple-query message `COMMIT` (Q, length 11).
                    let commit = b"Q\0\0\0\x0bCOMMIT\0";
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let hit = chunk.windows(commit.len()).any(|w| w == commit);
                        let mode = if hit {
                            armed.lock().unwrap().take()
                        } else {
                            None
                        };
                        match mode {
                            Some(after) => {
                                // The client's side first: no answer reaches it.
                                cut.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let _ = c_in.shutdown(Shutdown::Both);
                                if after {
                                    let _ = s_out.write_all(chunk);
                                    std::thread::sleep(Duration::from_millis(300));
                                }
                                let _ = s_out.shutdown(Shutdown::Both);
                                return;
                            }
                            None => {
                                if s_out.write_all(chunk).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        Self { port, armed, cut }
    }
}

use std::time::Duration;

/// The connection lost after `COMMIT` was sent: the ledger looks the serial up and answers
/// what happened — recorded when the database committed, unavailable (nothing recorded) when
/// it never saw the COMMIT — never a guess.
#[test]
fn schema_commit_outcome_unknown_is_looked_up() {
    let server = pg::PgServer::start();
    let db = server.create_database();
    let proxy = CommitCutter::start(server.port);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[labels.x]\npai = \"p.pem\"\nsigner = {{ file = \"k.pem\" }}\n",
        pg::store_toml(proxy.port, &db, dir.path())
    );
    let config = matter_est::config::Config::parse(&dir.path().join("c.toml"), &text).unwrap();
    let ledger = store::open_store(&config.store).unwrap();
    ledger
        .commit(&record(1, "a", "x"), &Admission::default())
        .unwrap();

    // Cut after COMMIT reached the database: it committed; the answer says so.
    *proxy.armed.lock().unwrap() = Some(true);
    assert_eq!(
        ledger
            .commit(&record(2, "b", "x"), &Admission::default())
            .unwrap(),
        Committed::Recorded
    );
    assert_eq!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(ledger.by_serial(&[2]).unwrap().is_some());

    // Cut before: the database rolled back; the answer is "unavailable", nothing recorded, and
    // the same request then succeeds.
    *proxy.armed.lock().unwrap() = Some(false);
    let lost = ledger.commit(&record(3, "c", "x"), &Admission::default());
    assert!(
        matches!(lost, Err(Error::LedgerUnavailable { .. })),
        "{lost:?}"
    );
    assert_eq!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(ledger.by_serial(&[3]).unwrap().is_none());
    ledger
        .commit(&record(3, "c", "x"), &Admission::default())
        .unwrap();
    assert_eq!(ledger.count("x").unwrap(), 3);
    assert!(ledger.audit_verify(None).unwrap().is_ok());
}

/// Schema 6 decides a whole run of issuances in one call: each one as if alone after the ones
/// before it in the run (a subject or token taken earlier in the run, a serial repeated, the
/// quota filled by the run, a renewal's takeover). The same submissions get the same answers
/// from redb, and on PostgreSQL they go as one run (one transaction): they queue while the
/// writer waits on another session's lock of a label's count row.
#[test]
fn schema_a_run_decides_each_issuance_after_the_ones_before_it() {
    let OwnPg {
        server,
        db,
        dir,
        ledger: on_pg,
    } = own_pg(|store_toml| store_toml);
    let on_redb = store::open_store(&StoreConfig::Redb(dir.path().join("l.redb"))).unwrap();

    let token = |id: &str| TokenRecord {
        id: id.into(),
        label: "x".into(),
        pid: None,
        created_at: 1,
        spent_by: None,
        expires_at: None,
        cn: None,
        revoked_at: None,
    };
    let admit = |token: Option<&str>, quota: Option<u64>, uncounted: bool| Admission {
        quota,
        token: token.map(str::to_string),
        uncounted,
    };
    let renewal = |serial: u8, key: u8| {
        let mut r = keyed(vec![serial], "r", "x", key);
        r.renews = Some(vec![50]);
        r
    };
    let q = Some(6);
    // Label x has 1 of 6 used before the run (serial 50, subject r).
    let run: Vec<(DacRecord, Admission)> = vec![
        (keyed(vec![1], "a", "x", 1), admit(None, q, false)),
        (keyed(vec![2], "a", "x", 1), admit(None, q, false)),
        (keyed(vec![3], "a", "x", 3), admit(None, q, false)),
        (keyed(vec![1], "b", "x", 4), admit(None, q, false)),
        (renewal(5, 5), admit(None, q, false)),
        (renewal(6, 6), admit(None, q, false)),
        (keyed(vec![7], "c", "x", 7), admit(Some("t1"), q, false)),
        (keyed(vec![8], "d", "x", 8), admit(Some("t1"), q, false)),
        (keyed(vec![9], "e", "x", 9), admit(Some("nope"), q, false)),
        (keyed(vec![10], "f", "x", 10), admit(None, q, false)),
        (keyed(vec![11], "g", "x", 11), admit(None, q, true)),
        (keyed(vec![12], "g2", "x", 12), admit(None, q, false)),
        (keyed(vec![13], "h", "x", 13), admit(None, q, false)),
        (keyed(vec![14], "h", "x", 13), admit(None, q, true)),
        (keyed(vec![15], "i", "x", 15), admit(Some("t2"), q, false)),
        (keyed(vec![16], "h", "y", 13), admit(None, None, false)),
        (keyed(vec![17], "h", "y", 13), admit(None, None, false)),
        // The serial of item 13, which was refused: free again.
        (keyed(vec![13], "j", "y", 18), admit(None, None, false)),
    ];
    let expected = [
        "recorded",
        "on record 1",
        "subject taken",
        "serial",
        "recorded",
        "subject taken",
        "recorded",
        "token spent",
        "token unknown",
        "recorded",
        "recorded",
        "recorded",
        "quota",
        "quota",
        "quota",
        "recorded",
        "on record 16",
        "recorded",
    ];
    let answer = |r: Result<Committed, Error>| match r {
        Ok(Committed::Recorded) => "recorded".to_string(),
        Ok(Committed::AlreadyOnRecord(d)) => format!("on record {}", d.serial[0]),
        Err(Error::SubjectTaken { .. }) => "subject taken".into(),
        Err(Error::Ledger(m)) if m.contains("serial") => "serial".into(),
        Err(Error::QuotaExhausted { quota: 6, .. }) => "quota".into(),
        Err(Error::Unauthenticated(m)) if m.contains("already used") => "token spent".into(),
        Err(Error::Unauthenticated(m)) if m.contains("unknown") => "token unknown".into(),
        other => format!("{other:?}"),
    };

    for (ledger, gated) in [(&on_redb, false), (&on_pg, true)] {
        ledger.put_token(&[1; 32], &token("t1")).unwrap();
        ledger.put_token(&[2; 32], &token("t2")).unwrap();
        ledger
            .commit(&keyed(vec![50], "r", "x", 50), &admit(None, q, false))
            .unwrap();
        ledger
            .commit(&record(60, "gate", "gate"), &Admission::default())
            .unwrap();
        let answers: Vec<String> = std::thread::scope(|s| {
            let gate = gated.then(|| hold_label_row(s, &server, &db, "gate", "FOR UPDATE", 1.5));
            // The writer waits on the gate's row while the run queues behind it.
            let gate_job = ledger.submit(&record(61, "gate2", "gate"), &Admission::default());
            std::thread::sleep(std::time::Duration::from_millis(100));
            let pending: Vec<_> = run.iter().map(|(r, a)| ledger.submit(r, a)).collect();
            assert_eq!(gate_job.wait().unwrap(), Committed::Recorded);
            if let Some(gate) = gate {
                gate.join().unwrap();
            }
            pending.into_iter().map(|p| answer(p.wait())).collect()
        });
        assert_eq!(answers, expected, "gated: {gated}");
        assert_eq!(ledger.count("x").unwrap(), 6);
        assert_eq!(ledger.count("y").unwrap(), 2);
        let issuer = vec![9; 20];
        let holder = |subject: &[u8]| ledger.by_subject(&issuer, subject).unwrap().unwrap();
        assert_eq!(holder(b"a").serial, vec![1]);
        assert_eq!(holder(b"r").serial, vec![5]);
        assert_eq!(holder(b"h").serial, vec![16]);
        assert_eq!(ledger.by_serial(&[14]).unwrap(), None);
        assert_eq!(
            ledger.token(&[1; 32]).unwrap().unwrap().spent_by,
            Some(vec![7])
        );
        assert_eq!(ledger.token(&[2; 32]).unwrap().unwrap().spent_by, None);
        assert!(ledger.audit_verify(None).unwrap().is_ok());
    }
    // One transaction wrote the run's eight DACs on PostgreSQL.
    assert_eq!(
        server.psql(
            &db,
            "SELECT count(*), count(DISTINCT xmin::text) FROM dacs WHERE label <> 'gate' \
             AND serial <> '\\x32'"
        ),
        "8|1"
    );
}

/// Another writer recording a serial or a subject of a run at the same moment (another node's
/// run under another label: a label's runs take turns) makes the run a serialization failure:
/// 503 with Retry-After and nothing written. The retry finds the rule's answer on record.
#[test]
fn schema_a_run_racing_another_writer_for_a_serial_or_subject_gets_503_then_the_rule() {
    let OwnPg {
        server, db, ledger, ..
    } = own_pg(|store_toml| store_toml);
    let hex = matter_est::asn1::hex;
    // (the other writer's DAC, this node's, what the retry gets)
    let cases = [
        (
            keyed(vec![0x70], "s", "y", 1),
            keyed(vec![0x71], "s", "x", 1),
            "subject taken",
        ),
        (
            keyed(vec![0x72], "t", "y", 2),
            keyed(vec![0x72], "u", "x", 3),
            "serial",
        ),
    ];
    for (other, mine, then) in cases {
        std::thread::scope(|s| {
            // The other writer's rows, in a transaction it keeps open for 1.5 s.
            let writer = s.spawn(|| {
                server.psql(
                    &db,
                    &format!(
                        "BEGIN; \
                         INSERT INTO dacs (serial, label, issuer_key, subject, subject_der, vid, \
                         pid, requester, issued_at, der) VALUES ('\\x{}', 'y', '\\x{}', '{}', \
                         '\\x{}', {}, {}, 'test', 1, '\\x{}'); \
                         INSERT INTO subjects (issuer_key, subject_der, holder) \
                         SELECT issuer_key, subject_der, seq FROM dacs WHERE serial = '\\x{}'; \
                         SELECT pg_sleep(1.5); COMMIT;",
                        hex(&other.serial),
                        hex(&other.issuer_key),
                        other.subject,
                        hex(&other.subject_der),
                        other.vid,
                        other.pid,
                        hex(&other.der),
                        hex(&other.serial),
                    ),
                )
            });
            wait_for(
                &server,
                &db,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
            );
            // The run's insert waits for the other transaction, then finds its row.
            match ledger.commit(&mine, &Admission::default()) {
                Err(Error::LedgerUnavailable {
                    reason,
                    retry_after_secs,
                }) => {
                    assert!(reason.contains("another writer"), "{reason}");
                    assert!(retry_after_secs > 0);
                }
                other => panic!("{other:?}"),
            }
            writer.join().unwrap();
        });
        assert_eq!(ledger.count("x").unwrap(), 0, "nothing written");
        let retried = match ledger.commit(&mine, &Admission::default()) {
            Err(Error::SubjectTaken { .. }) => "subject taken".to_string(),
            Err(Error::Ledger(m)) if m.contains("serial") => "serial".into(),
            other => format!("{other:?}"),
        };
        assert_eq!(retried, then);
    }
    assert_eq!(
        server.psql(&db, "SELECT count(*) FROM dacs WHERE label = 'x'"),
        "0"
    );
    assert!(ledger.audit_verify(None).unwrap().is_ok());
}
