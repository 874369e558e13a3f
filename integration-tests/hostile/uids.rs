//! Malformed UIDs (path characters, NUL, too long, letters): refused before they name a
//! file.

use super::wire::*;
use super::*;

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "study_uid_with_slash",
            expect: Obs::Status(0xC001),
            why: "Study UID '1.2/../3' → C001",
            run: |env| {
                let c = "study_uid_with_slash";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000D, even("1.2/../3", 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "series_uid_with_dotdot",
            expect: Obs::Status(0xC001),
            why: "Series UID '1.2..3' → C001",
            run: |env| {
                let c = "series_uid_with_dotdot";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000E, even("1.2..3", 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "sop_uid_with_nul",
            expect: Obs::Status(0xC001),
            why: "Affected SOP Instance UID with an embedded NUL → C001",
            run: |env| {
                let c = "sop_uid_with_nul";
                let bad = format!("{}\u{0}9", uid(c, "sop"));
                let mut f = mr(c);
                set(&mut f, 0x0008, 0x0018, even(&bad, 0));
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &bad), &encode(&f, true));
                not_spooled(env, &bad, o)
            },
        },
        Case {
            name: "sop_uid_65_chars",
            expect: Obs::Status(0xC001),
            why: "Affected SOP Instance UID of 65 characters → C001",
            run: |env| {
                let bad = format!("1.{}", "2".repeat(63));
                assert_eq!(bad.len(), 65);
                let mut f = mr("sop_uid_65_chars");
                set(&mut f, 0x0008, 0x0018, even(&bad, 0));
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, &bad), &encode(&f, true));
                not_spooled(env, &bad, o)
            },
        },
        Case {
            name: "study_uid_70_chars",
            expect: Obs::Status(0xC001),
            why: "Study UID of 70 characters in the data set → C001",
            run: |env| {
                let c = "study_uid_70_chars";
                let mut f = mr(c);
                set(
                    &mut f,
                    0x0020,
                    0x000D,
                    even(&format!("1.{}", "3".repeat(68)), 0),
                );
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "study_uid_with_letters",
            expect: Obs::Status(0xC001),
            why: "Study UID '1.2.abc.4' → C001",
            run: |env| {
                let c = "study_uid_with_letters";
                let mut f = mr(c);
                set(&mut f, 0x0020, 0x000D, even("1.2.abc.4", 0));
                let o = store_fields(env, PC_MR_EXPLICIT, MR, c, &f, true);
                not_spooled(env, &uid(c, "sop"), o)
            },
        },
        Case {
            name: "command_uid_path_traversal",
            expect: Obs::Status(0xC001),
            why: "Affected SOP Instance UID '../../etc/passwd' → C001, nothing written",
            run: |env| {
                let bad = "../../etc/passwd";
                let mut f = mr("command_uid_path_traversal");
                set(&mut f, 0x0008, 0x0018, even(bad, 0));
                let p = match open(env) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let o = p.store(PC_MR_EXPLICIT, &store_cmd(MR, bad), &encode(&f, true));
                not_spooled(env, bad, o)
            },
        },
    ]
}
