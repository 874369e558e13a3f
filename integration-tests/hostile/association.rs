//! Association negotiation: AE titles, presentation contexts, what comes before an
//! A-ASSOCIATE-AC.
use std::io::Write;
use std::net::Shutdown;

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
    ]
}
