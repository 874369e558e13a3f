//! Lengths that lie: claimed sizes far beyond what is sent must not be allocated.
use std::io::Write;
use std::net::Shutdown;

use super::wire::*;
use super::*;
use crate::common::*;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "huge_dimensions_claimed",
            expect: Obs::Status(0x0000),
            why: "65535×65535×4000 frames claimed, 32 bytes sent → stored, no allocation (VmHWM +<64 MiB)",
            run: |env| {
                let c = "huge_dimensions_claimed";
                let before = env.hwm_kb();
                let f = mr_fields(c, 65535, 65535, Some("4000"), 32);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "element_length_lies_4gb",
            expect: Obs::Status(0xC000),
            why: "an implicit-VR element claims 0xFFFFFFF0 bytes → C000, no allocation",
            run: |env| {
                let c = "element_length_lies_4gb";
                let before = env.hwm_kb();
                let mut data = encode(&mr(c)[..4].to_vec(), false);
                // (0009,0010) private element claiming ~4 GiB, followed by a little data.
                data.extend_from_slice(&0x0009u16.to_le_bytes());
                data.extend_from_slice(&0x1010u16.to_le_bytes());
                data.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                data.extend_from_slice(&[0x41; 64]);
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_IMPLICIT, &store_cmd(MR, &uid(c, "sop")), &data);
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "oversize_associate_rq",
            expect: Obs::Rj(1, 3, 2),
            why: "A-ASSOCIATE-RQ claiming 0xFFFFFFF0 bytes → A-ASSOCIATE-RJ permanent, local limit exceeded, no allocation",
            run: |env| {
                let before = env.hwm_kb();
                let mut s = connect(env.port);
                let mut rq = assoc_rq(SCU_AE, NODE_AE, &std_ctxs());
                rq[2..6].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
                let _ = s.write_all(&rq);
                let _ = s.shutdown(Shutdown::Write);
                let o = match read_pdu(&mut s) {
                    Ok((ty, b)) => terminal(ty, &b),
                    Err(o) => o,
                };
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                o
            },
        },
        Case {
            name: "oversize_pdata",
            expect: Obs::Abort,
            why: "P-DATA-TF claiming 0xFFFFFFF0 bytes → A-ABORT, no allocation, no tmp file",
            run: |env| {
                let before = env.hwm_kb();
                let mut p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let mut b = pdata(&[(PC_MR_EXPLICIT, true, true, &store_cmd(MR, &uid("oversize_pdata", "sop")))]);
                b[2..6].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
                b.extend_from_slice(&[0u8; 1024]);
                if let Err(o) = p.send(&b) {
                    return o;
                }
                let _ = p.s.shutdown(Shutdown::Write);
                let o = p.outcome();
                let grew = env.hwm_kb().saturating_sub(before);
                if grew > 64 * 1024 {
                    return Obs::Fail(format!("VmHWM grew by {grew} kB"));
                }
                o
            },
        },
    ]
}
