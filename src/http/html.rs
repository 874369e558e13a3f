//! A small HTML builder whose only way in for a value is escaped: tag and attribute names
//! are `&'static str`, text and attribute values go through [`escape`]. Every DICOM string
//! shown on the pages (a PatientName, a SeriesDescription) comes from whoever sent the
//! study, so no path may put one into the page unescaped — and with this builder none can.

/// `&`, `<`, `>`, `"` and `'` as character references.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[derive(Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Self {
        Self::default()
    }

    /// `<name attr="value"…>` children `</name>`.
    pub fn el(
        &mut self,
        name: &'static str,
        attrs: &[(&'static str, &str)],
        body: impl FnOnce(&mut Html),
    ) -> &mut Self {
        self.open(name, attrs);
        body(self);
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
        self
    }

    /// An element holding only text.
    pub fn text_el(
        &mut self,
        name: &'static str,
        attrs: &[(&'static str, &str)],
        text: &str,
    ) -> &mut Self {
        self.el(name, attrs, |h| {
            h.text(text);
        })
    }

    /// A void element (`<input>`, `<meta>`).
    pub fn void(&mut self, name: &'static str, attrs: &[(&'static str, &str)]) -> &mut Self {
        self.open(name, attrs);
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.0.push_str(&escape(s));
        self
    }

    fn open(&mut self, name: &'static str, attrs: &[(&'static str, &str)]) {
        self.0.push('<');
        self.0.push_str(name);
        for (k, v) in attrs {
            self.0.push(' ');
            self.0.push_str(k);
            self.0.push_str("=\"");
            self.0.push_str(&escape(v));
            self.0.push('"');
        }
        self.0.push('>');
    }

    /// A table: a header row (none when `head` is empty), then one row per item of text cells (a cell may be a link:
    /// `Cell::Link`).
    pub fn table(&mut self, head: &[&str], rows: &[Vec<Cell>]) -> &mut Self {
        self.el("table", &[], |t| {
            if !head.is_empty() {
                t.el("tr", &[], |r| {
                    for h in head {
                        r.text_el("th", &[], h);
                    }
                });
            }
            for row in rows {
                t.el("tr", &[], |r| {
                    for c in row {
                        r.el("td", &[], |d| match c {
                            Cell::Text(s) => {
                                d.text(s);
                            }
                            Cell::Link(href, s) => {
                                d.text_el("a", &[("href", href)], s);
                            }
                        });
                    }
                });
            }
        })
    }

    pub fn finish(self) -> String {
        self.0
    }
}

pub enum Cell {
    Text(String),
    Link(String, String),
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Text(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Text(s.to_string())
    }
}

/// A whole page: title, navigation, then `body`. No script, no external asset.
pub fn page(title: &str, body: impl FnOnce(&mut Html)) -> String {
    let mut h = Html::new();
    h.0.push_str("<!DOCTYPE html>");
    h.el("html", &[("lang", "en")], |h| {
        h.el("head", &[], |h| {
            h.void("meta", &[("charset", "utf-8")]);
            h.text_el("title", &[], &format!("{title} — prima-node"));
            h.text_el("style", &[], STYLE);
        });
        h.el("body", &[], |h| {
            h.el("nav", &[], |n| {
                for (href, label) in [
                    ("/", "Overview"),
                    ("/studies", "Studies"),
                    ("/outbox", "Outbox"),
                    ("/associations", "Associations"),
                    ("/cluster", "Cluster"),
                    ("/metrics", "Metrics"),
                ] {
                    n.text_el("a", &[("href", href)], label);
                    n.text(" ");
                }
            });
            h.text_el("h1", &[], title);
            body(h);
        });
    });
    h.finish()
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn when(ms: i64) -> String {
    crate::store::state::utc_text(ms)
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#eee}nav a{margin-right:1em}.warn{color:#a40}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(when(0), "—");
        assert_eq!(when(1_796_342_400_000), "2026-12-04 00:00:00");
        assert_eq!(when(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03");
    }

    #[test]
    fn values_are_escaped_everywhere() {
        let evil = "<script>alert('x')</script>\"&";
        let mut h = Html::new();
        h.text_el("p", &[("title", evil)], evil);
        h.table(
            &["a"],
            &[vec![Cell::Link(evil.into(), evil.into()), evil.into()]],
        );
        let out = h.finish();
        assert!(!out.contains("<script>"), "{out}");
        assert!(!out.contains("'x'"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
    }
}
