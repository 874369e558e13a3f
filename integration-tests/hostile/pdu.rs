//! P-DATA framing and the association state machine: fragmented PDVs, unknown or
//! rejected contexts, PDVs out of order, transfers cut short by EOF, A-ABORT or A-RELEASE.
use std::net::Shutdown;

use super::wire::*;
use super::*;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "one_byte_pdvs_one_pdu",
            expect: Obs::Status(0x0000),
            why: "command and data split into 1-byte PDVs inside one P-DATA-TF → stored",
            run: |env| {
                let c = "one_byte_pdvs_one_pdu";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let data = encode(&mr(c), true);
                let mut pdvs = Vec::new();
                for (i, b) in cmd.iter().enumerate() {
                    pdvs.push((
                        PC_MR_EXPLICIT,
                        true,
                        i + 1 == cmd.len(),
                        std::slice::from_ref(b),
                    ));
                }
                for (i, b) in data.iter().enumerate() {
                    pdvs.push((
                        PC_MR_EXPLICIT,
                        false,
                        i + 1 == data.len(),
                        std::slice::from_ref(b),
                    ));
                }
                if let Err(o) = p.send(&pdata(&pdvs)) {
                    return o;
                }
                let o = p.outcome();
                p.release();
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "one_byte_pdvs_own_pdus",
            expect: Obs::Status(0x0000),
            why: "every 1-byte PDV in its own P-DATA-TF, written byte-by-byte → stored",
            run: |env| {
                let c = "one_byte_pdvs_own_pdus";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let data = encode(&mr(c), true);
                let mut wire = Vec::new();
                for (i, b) in cmd.iter().enumerate() {
                    wire.extend(pdata(&[(
                        PC_MR_EXPLICIT,
                        true,
                        i + 1 == cmd.len(),
                        std::slice::from_ref(b),
                    )]));
                }
                for (i, b) in data.iter().enumerate() {
                    wire.extend(pdata(&[(
                        PC_MR_EXPLICIT,
                        false,
                        i + 1 == data.len(),
                        std::slice::from_ref(b),
                    )]));
                }
                // Odd TCP segmentation too: 3 bytes per write.
                for chunk in wire.chunks(3) {
                    if let Err(o) = p.send(chunk) {
                        return o;
                    }
                }
                let o = p.outcome();
                p.release();
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "pdata_unnegotiated_context",
            expect: Obs::Abort,
            why: "P-DATA on context id 99 (never proposed) → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = store_cmd(MR, &uid("pdata_unnegotiated_context", "sop"));
                if let Err(o) = p.send(&pdata(&[(99, true, true, &c)])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "pdata_rejected_context",
            expect: Obs::Abort,
            why: "P-DATA on the CT context the node rejected → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let c = store_cmd(CT, &uid("pdata_rejected_context", "sop"));
                if let Err(o) = p.send(&pdata(&[(PC_CT, true, true, &c)])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "data_pdv_without_command",
            expect: Obs::Abort,
            why: "data PDV with no command before it → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let d = encode(&mr("data_pdv_without_command"), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, false, true, &d)])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "garbage_command_set",
            expect: Obs::Abort,
            why: "command PDV that is not a command set → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                if let Err(o) = p.send(&pdata(&[(
                    PC_MR_EXPLICIT,
                    true,
                    true,
                    b"\x08\x00\xff\xffhello world!",
                )])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "unknown_pdu_type_in_association",
            expect: Obs::Abort,
            why: "PDU type 0x55 after association → A-ABORT",
            run: |env| {
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                if let Err(o) = p.send(&pdu(0x55, &[1, 2, 3, 4])) {
                    return o;
                }
                p.outcome()
            },
        },
        Case {
            name: "truncated_pdata_mid_dataset",
            expect: Obs::Abort,
            why: "data P-DATA-TF cut short, then EOF → A-ABORT, no partial file",
            run: |env| {
                let c = "truncated_pdata_mid_dataset";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
                    return o;
                }
                let (a, b) = d.split_at(d.len() / 2);
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, a)]));
                let full = pdata(&[(PC_MR_EXPLICIT, false, true, b)]);
                let _ = p.send(&full[..full.len() / 2]);
                let _ = p.s.shutdown(Shutdown::Write);
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "abort_mid_dataset",
            expect: Obs::Closed,
            why: "peer A-ABORT after half the data set → node closes, no partial file",
            run: |env| {
                let c = "abort_mid_dataset";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
                    return o;
                }
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, &d[..d.len() / 2])]));
                let _ = p.send(&pdu(0x07, &[0, 0, 0, 0]));
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "release_mid_dataset",
            expect: Obs::ReleaseRp,
            why: "A-RELEASE-RQ after half the data set → A-RELEASE-RP, partial instance dropped",
            run: |env| {
                let c = "release_mid_dataset";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
                    return o;
                }
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, &d[..d.len() / 2])]));
                let _ = p.send(&pdu(0x05, &[0, 0, 0, 0]));
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "command_pdv_while_data_expected",
            expect: Obs::Abort,
            why: "a new command PDV before the previous data set ended → A-ABORT, no partial file",
            run: |env| {
                let c = "command_pdv_while_data_expected";
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let cmd = store_cmd(MR, &uid(c, "sop"));
                let d = encode(&mr(c), true);
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)]));
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, false, false, &d[..10])]));
                let _ = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)]));
                let o = p.outcome();
                if let Err(f) = env.tmp_empty() {
                    return f;
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
    ]
}
