//! The structure of a data set: nesting that never ends or never closes, and meta
//! information posing inside the data set. Refused by the length guard before any parser
//! sees them (issue 14: the first overflowed the receiving thread's stack, the last let a
//! 4 GiB claim through).

use super::wire::*;
use super::*;

/// (0008,1115) SQ of undefined length with one undefined-length item: 20 bytes a level.
fn levels(n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n * 20);
    for _ in 0..n {
        b.extend([
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        b.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    b
}

/// A well-formed MR data set without its pixel data, then `tail`.
fn mr_then(case: &str, tail: &[u8]) -> Vec<u8> {
    let mut f = mr(case);
    remove(&mut f, 0x7FE0, 0x0010);
    let mut b = encode(&f, true);
    b.extend_from_slice(tail);
    b
}

/// A C-STORE of `data`, in P-DATA PDUs of at most 16 KiB (what the association offers).
fn store_raw(env: &Env, case: &str, data: &[u8]) -> Obs {
    let mut p = match open(env) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let cmd = store_cmd(MR, &uid(case, "sop"));
    if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, true, true, &cmd)])) {
        return o;
    }
    let chunks: Vec<&[u8]> = data.chunks(16_000).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        if let Err(o) = p.send(&pdata(&[(PC_MR_EXPLICIT, false, last, c)])) {
            return o;
        }
    }
    let o = p.outcome();
    if matches!(o, Obs::Status(_)) {
        p.release();
    }
    not_spooled(env, &uid(case, "sop"), o)
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "nesting_200000_levels",
            expect: Obs::Status(0xC000),
            why: "4 MB of undefined-length SQ/item levels, never closed → C000, node stays up",
            run: |env| {
                let c = "nesting_200000_levels";
                store_raw(env, c, &mr_then(c, &levels(200_000)))
            },
        },
        Case {
            name: "items_left_open",
            expect: Obs::Status(0xC000),
            why: "a data set that ends inside open items → C000 cannot understand",
            run: |env| {
                let c = "items_left_open";
                store_raw(env, c, &mr_then(c, &levels(3)))
            },
        },
        Case {
            name: "meta_group_in_dataset",
            expect: Obs::Status(0xC000),
            why: "(0002,0010) naming big endian at the start of the data set, then a 4 GiB \
                  claim → C000 (group 0002 is refused inside a data set)",
            run: |env| {
                let c = "meta_group_in_dataset";
                let mut b = encode(
                    &vec![(0x0002, 0x0010, "UI", even("1.2.840.10008.1.2.2", 0))],
                    true,
                );
                b.extend(mr_then(c, &[]));
                b.extend([
                    0x10, 0x00, 0x10, 0x00, b'U', b'N', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
                ]);
                store_raw(env, c, &b)
            },
        },
    ]
}
