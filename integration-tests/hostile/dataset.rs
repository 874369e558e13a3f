//! The data set of a C-STORE: well-formed baselines, unparsable or empty data, missing
//! identifiers, contents that contradict the command, the wrong transfer syntax.

use super::wire::*;
use super::*;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "normal_explicit",
            expect: Obs::Status(0x0000),
            why: "baseline: well-formed MR instance, Explicit VR LE → stored",
            run: |env| {
                let c = "normal_explicit";
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &mr(c), true);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "normal_implicit",
            expect: Obs::Status(0x0000),
            why: "baseline: well-formed MR instance, Implicit VR LE → stored",
            run: |env| {
                let c = "normal_implicit";
                let o = store_fields(env, PC_MR_IMPLICIT, MR, c, &mr(c), false);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "garbage_dataset",
            expect: Obs::Status(0xC000),
            why: "data set bytes that do not parse → C000 cannot understand",
            run: |env| {
                let c = "garbage_dataset";
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let junk: Vec<u8> = (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &uid(c, "sop")), &junk);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "zero_length_dataset",
            expect: Obs::Status(0xC001),
            why: "empty data set: no SOP Class/Instance UID → C001 (missing UID), not stored",
            run: |env| {
                let c = "zero_length_dataset";
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &uid(c, "sop")), &[]);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "missing_sop_instance_uid",
            expect: Obs::Status(0xC001),
            why: "data set without (0008,0018) → C001",
            run: |env| {
                let c = "missing_sop_instance_uid";
                let mut f = mr(c);
                remove(&mut f, 0x0008, 0x0018);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "missing_series_uid",
            expect: Obs::Status(0xC001),
            why: "data set without (0020,000E) → C001",
            run: |env| {
                let c = "missing_series_uid";
                let mut f = mr(c);
                remove(&mut f, 0x0020, 0x000E);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "missing_study_uid",
            expect: Obs::Status(0xC001),
            why: "data set without (0020,000D) → C001",
            run: |env| {
                let c = "missing_study_uid";
                let mut f = mr(c);
                remove(&mut f, 0x0020, 0x000D);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "dataset_sop_uid_differs",
            expect: Obs::Status(0xC002),
            why: "data set SOP Instance UID ≠ command's → C002 (UID mismatch), neither stored",
            run: |env| {
                let c = "dataset_sop_uid_differs";
                let other = format!("{}.5", uid(c, "sop"));
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0018, even(&other, 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &other, not_spooled(env, &uid(c, "sop"), o))
            },
        },
        Case {
            name: "dataset_sop_class_ct",
            expect: Obs::Status(0xA900),
            why: "CT SOP Class in the data set, MR in the command → A900 data set mismatch",
            run: |env| {
                let c = "dataset_sop_class_ct";
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0016, even(CT, 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "same_sop_uid_new_content",
            expect: Obs::Status(0x0000),
            why:
                "same SOP Instance UID twice, different content → both 0000, spool holds the second",
            run: |env| {
                let c = "same_sop_uid_new_content";
                let mut first = mr(c);
                set(&mut first, 0x0008, 0x103E, even("FIRST COPY", b' '));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &first, true);
                if o != Obs::Status(0) {
                    return o;
                }
                let mut second = mr(c);
                set(&mut second, 0x0008, 0x103E, even("SECOND COPY", b' '));
                set(&mut second, 0x7FE0, 0x0010, vec![0x22; 32]);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &second, true);
                if o != Obs::Status(0) {
                    return o;
                }
                let Some(b) = env.spool_bytes(&uid(c, "sop")) else {
                    return Obs::Fail("not in spool".into());
                };
                let tail = encode(&second, true);
                if !b.ends_with(&tail) {
                    return Obs::Fail("spool does not hold the second copy's bytes".into());
                }
                o
            },
        },
        Case {
            name: "pixel_data_short",
            expect: Obs::Status(0x0000),
            why: "8 bytes of pixels for 4×4×16 bit → stored (skipped later by imaging)",
            run: |env| {
                let c = "pixel_data_short";
                let f = mr_fields(c, 4, 4, None, 8);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "pixel_data_long",
            expect: Obs::Status(0x0000),
            why: "4 KiB of pixels for 4×4×16 bit → stored (skipped later by imaging)",
            run: |env| {
                let c = "pixel_data_long";
                let f = mr_fields(c, 4, 4, None, 4096);
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                expect_spooled(env, c, o, true)
            },
        },
        Case {
            name: "explicit_bytes_on_implicit_context",
            expect: Obs::Status(0xC000),
            why: "Explicit VR encoding sent on the Implicit VR context → C000",
            run: |env| {
                let c = "explicit_bytes_on_implicit_context";
                let o = store_fields(env, PC_MR_IMPLICIT, MR, c, &mr(c), true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "implicit_bytes_on_explicit_context",
            expect: Obs::Status(0xC000),
            why: "Implicit VR encoding sent on the Explicit VR context → C000",
            run: |env| {
                let c = "implicit_bytes_on_explicit_context";
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &mr(c), false);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
    ]
}
