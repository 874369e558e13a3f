//! Writing JSON exactly as Python's `json.dump(obj, f, indent=2)` does, so the predictions
//! file is byte-compatible with upstream's (float repr, indentation, separators).
use std::fmt::Write;

/// A minimal ordered JSON value (insertion order is kept, as Python dicts do).
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Dict(Vec<(String, PyValue)>),
}

/// Python's `repr(float)`: shortest round-trip digits; scientific notation when the
/// decimal exponent is < -4 or >= 16, written as `1e-05` / `1.5e+16`.
pub fn float_repr(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", v); // shortest round-trip, e.g. "-1.2345e-5"
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let es = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{es}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let s = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    format!("{sign}{s}")
}

fn escape(s: &str, out: &mut String) {
    // json.dump's default ensure_ascii=True
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(v: &PyValue, level: usize, out: &mut String) {
    let pad = |l: usize| "  ".repeat(l);
    match v {
        PyValue::Float(f) => out.push_str(&float_repr(*f)),
        PyValue::Str(s) => escape(s, out),
        PyValue::List(items) if items.is_empty() => out.push_str("[]"),
        PyValue::Dict(items) if items.is_empty() => out.push_str("{}"),
        PyValue::List(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(level + 1));
                write_value(it, level + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(level));
            out.push(']');
        }
        PyValue::Dict(items) => {
            out.push('{');
            for (i, (k, it)) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(level + 1));
                escape(k, out);
                out.push_str(": ");
                write_value(it, level + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(level));
            out.push('}');
        }
    }
}

/// `json.dumps(v, indent=2)` (no trailing newline, as `json.dump` writes).
pub fn dumps_indent2(v: &PyValue) -> String {
    let mut out = String::new();
    write_value(v, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(-0.5), "-0.5");
        assert_eq!(float_repr(1e-5), "1e-05");
        assert_eq!(float_repr(0.0001), "0.0001");
        assert_eq!(float_repr(1.5e16), "1.5e+16");
        assert_eq!(float_repr(123456.0), "123456.0");
        assert_eq!(float_repr(0.1f32 as f64), "0.10000000149011612");
        assert_eq!(float_repr(-2.2f32 as f64), "-2.200000047683716");
        assert_eq!(float_repr(1e22), "1e+22");
    }

    #[test]
    fn layout_matches_json_dump_indent_2() {
        let v = PyValue::Dict(vec![
            ("a".into(), PyValue::List(vec![PyValue::Float(0.5)])),
            (
                "b".into(),
                PyValue::List(vec![PyValue::List(vec![
                    PyValue::Float(1.0),
                    PyValue::Float(2.0),
                ])]),
            ),
        ]);
        assert_eq!(
            dumps_indent2(&v),
            "{\n  \"a\": [\n    0.5\n  ],\n  \"b\": [\n    [\n      1.0,\n      2.0\n    ]\n  ]\n}"
        );
    }
}
