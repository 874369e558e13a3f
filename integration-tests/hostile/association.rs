//! Association negotiation: AE titles, presentation contexts, what comes before an
//! A-ASSOCIATE-AC.
use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::wire::*;
use super::*;
use crate::common::*;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "c_echo",
            expect: Obs::Status(0x0000),
            why: "C-ECHO on the Verification context",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = command(0x0030, VERIFY, None, false);
                if let Err(o) = p.send(&pdata(&[(PC_VERIFY, true, true, &c)])) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                o
            },
        },
        Case {
            name: "unknown_called_ae",
            expect: Obs::Rj(RJ_PERMANENT_USER, RJ_SOURCE_USER, 7),
            why: "A-ASSOCIATE-RJ permanent, service user, called AE not recognized",
            run: |env| match associate(env.port, SCU_AE, "NOTPRIMA") {
                Ok(_) => Obs::Fail("accepted".into()),
                Err(o) => o,
            },
        },
        Case {
            name: "unknown_calling_ae",
            expect: Obs::Rj(RJ_PERMANENT_USER, RJ_SOURCE_USER, 3),
            why: "A-ASSOCIATE-RJ permanent, service user, calling AE not recognized",
            run: |env| match associate(env.port, "STRANGER", NODE_AE) {
                Ok(_) => Obs::Fail("accepted".into()),
                Err(o) => o,
            },
        },
        Case {
            name: "ct_context_not_negotiated",
            expect: Obs::Ac(vec![(1, 0), (3, 0), (5, 0), (7, 3)]),
            why: "A-ASSOCIATE-AC; CT context rejected: abstract syntax not supported (3)",
            run: |env| match associate(env.port, SCU_AE, NODE_AE) {
                Ok((p, ctx)) => {
                    p.release();
                    Obs::Ac(ctx)
                }
                Err(o) => o,
            },
        },
        Case {
            name: "unknown_pdu_type_first",
            expect: Obs::Abort,
            why: "PDU type 0x55 instead of A-ASSOCIATE-RQ → A-ABORT",
            run: |env| {
                let mut s = connect(env.port);
                let _ = s.write_all(&pdu(0x55, &[1, 2, 3, 4]));
                let _ = s.shutdown(Shutdown::Write);
                match read_pdu(&mut s) {
                    Ok((ty, b)) => terminal(ty, &b),
                    Err(o) => o,
                }
            },
        },
        Case {
            name: "truncated_associate_rq",
            expect: Obs::Closed,
            why: "A-ASSOCIATE-RQ cut short, then EOF → connection closed, nothing else",
            run: |env| {
                let mut s = connect(env.port);
                let rq = assoc_rq(SCU_AE, NODE_AE, &std_ctxs());
                let _ = s.write_all(&rq[..40]);
                let _ = s.shutdown(Shutdown::Write);
                match read_pdu(&mut s) {
                    Ok((ty, b)) => terminal(ty, &b),
                    Err(o) => o,
                }
            },
        },
        Case {
            name: "associate_rq_announcing_4gib",
            expect: Obs::Rj(1, 3, 2),
            why: "A-ASSOCIATE-RQ announcing 4 GiB → A-ASSOCIATE-RJ permanent, service provider, \
                  local limit exceeded, before its body is read (RSS flat); C-ECHO and C-STORE still work",
            run: associate_rq_4gib,
        },
        Case {
            name: "associate_rq_trickled",
            expect: Obs::Closed,
            why: "A-ASSOCIATE-RQ sent a byte every 200 ms → closed at the 10 s negotiation \
                  deadline, not at the 20 s read timeout",
            run: associate_rq_trickled,
        },
    ]
}

fn huge_rq_header() -> Vec<u8> {
    let mut h = vec![0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    // The start of a plausible request body.
    h.extend_from_slice(&assoc_rq(SCU_AE, NODE_AE, &std_ctxs())[6..]);
    h
}

fn associate_rq_4gib(env: &Env) -> Obs {
    let pid = env.node.pid().expect("node running");
    let rss0 = vm_kb(pid, "VmRSS:");
    let mut s = connect(env.port);
    let _ = s.write_all(&huge_rq_header());
    let got = match read_pdu(&mut s) {
        Ok((ty, b)) => terminal(ty, &b),
        Err(o) => o,
    };
    // Then push 256 MiB at it: the node must not read (let alone keep) any of it.
    let mut s = connect(env.port);
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&huge_rq_header());
    let chunk = vec![0x20u8; 1 << 20];
    let mut pushed = 0usize;
    while pushed < 256 << 20 && s.write_all(&chunk).is_ok() {
        pushed += chunk.len();
    }
    drop(s);
    let rss1 = vm_kb(pid, "VmRSS:");
    if rss1 > rss0 + 32 * 1024 {
        return Obs::Fail(format!(
            "node RSS grew from {rss0} to {rss1} kB ({} MiB pushed)",
            pushed >> 20
        ));
    }
    if pushed >= 64 << 20 {
        return Obs::Fail(format!(
            "node took {} MiB of an oversized request",
            pushed >> 20
        ));
    }
    still_serves(env, "associate_rq_announcing_4gib", got)
}

fn associate_rq_trickled(env: &Env) -> Obs {
    let mut s = connect(env.port);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let rq = assoc_rq(SCU_AE, NODE_AE, &std_ctxs());
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        for b in rq {
            if w.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let got = match read_pdu(&mut s) {
        Ok((ty, b)) => terminal(ty, &b),
        Err(o) => o,
    };
    let waited = t0.elapsed();
    drop(s);
    let _ = writer.join();
    if !(Duration::from_secs(9)..Duration::from_secs(15)).contains(&waited) {
        return Obs::Fail(format!("{got:?} after {:.1} s", waited.as_secs_f64()));
    }
    still_serves(env, "associate_rq_trickled", got)
}

/// `got`, if the node still answers C-ECHO and stores a good instance afterwards.
fn still_serves(env: &Env, case: &str, got: Obs) -> Obs {
    let echo = match open(env) {
        Ok(mut p) => {
            let c = command(0x0030, VERIFY, None, false);
            let o = match p.send(&pdata(&[(PC_VERIFY, true, true, &c)])) {
                Ok(()) => p.outcome(),
                Err(o) => o,
            };
            p.release();
            o
        }
        Err(o) => o,
    };
    if echo != Obs::Status(0) {
        return Obs::Fail(format!("C-ECHO afterwards: {echo:?}"));
    }
    let stored = store_fields(env, PC_MR_EXPLICIT, MR, case, &mr(case), true);
    if expect_spooled(env, case, stored.clone(), true) != Obs::Status(0) {
        return Obs::Fail(format!("C-STORE afterwards: {stored:?}"));
    }
    got
}
