//! The DIMSE command set: missing fields, unsupported operations, a SOP class its context
//! does not carry.

use super::wire::*;
use super::*;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "command_without_affected_sop_instance",
            expect: Obs::Status(0xC001),
            why: "C-STORE-RQ lacking (0000,1000) → C001 (bad UID), not stored",
            run: |env| {
                let c = "command_without_affected_sop_instance";
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(
                    PC_MR_EXPLICIT,
                    &command(0x0001, MR, None, true),
                    &encode(&mr(c), true),
                );
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "ct_instance_on_mr_context",
            expect: Obs::Status(0x0122),
            why: "C-STORE of a CT SOP class on the MR context → 0122 SOP class not supported",
            run: |env| {
                let c = "ct_instance_on_mr_context";
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0016, even(CT, 0));
                set(&mut f, 0x0008, 0x0060, even("CT", b' '));
                let o = store_fields(env, PC_MR_EXPLICIT, CT, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "c_store_without_dataset",
            expect: Obs::Status(0xC000),
            why: "C-STORE-RQ with CommandDataSetType 0101 (no data set) → C000",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = command(
                    0x0001,
                    MR,
                    Some(&uid("c_store_without_dataset", "sop")),
                    false,
                );
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &c)])) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                o
            },
        },
        Case {
            name: "unsupported_dimse_c_find",
            expect: Obs::Status(0x0211),
            why: "C-FIND-RQ (no data set) on the MR context → 0211 unrecognized operation",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = command(0x0020, MR, None, false);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &c)])) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                o
            },
        },
    ]
}
