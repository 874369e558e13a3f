//! Who may read and who may act. Reads (every page and the API; not the probes `/healthz`,
//! `/readyz` and `/metrics`, which carry no patient data) need the token as
//! `Authorization: Bearer …`, or as the password of a browser's login dialog (HTTP Basic,
//! any user name), unless `[http] open_reads` opts out on a loopback address. The two
//! actions take the token only as a Bearer header or the form's field, never from Basic:
//! a browser sends Basic credentials with any request to the site, a cross-site form's POST
//! included, so accepting them would let another site act (CSRF).

use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::Ctx;

/// Equal, in time that depends only on the lengths.
fn same(given: &str, want: &str) -> bool {
    given.len() == want.len()
        && given
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The credential in `Authorization`, as sent for a read: a Bearer token, or the password of
/// Basic credentials.
fn read_credential(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(_, pw)| pw.to_string())
}

/// May these headers read, with this token (none: nobody may)?
pub fn may_read(headers: &HeaderMap, token: Option<&str>) -> bool {
    match (token, read_credential(headers)) {
        (Some(want), Some(given)) => same(&given, want),
        _ => false,
    }
}

/// May this request act: the token as a Bearer header or the form's `token` field.
pub fn may_act(headers: &HeaderMap, token: Option<&str>, form_token: Option<&str>) -> bool {
    let Some(want) = token else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(form_token)
        .unwrap_or("");
    same(given, want)
}

/// In front of every page and the API: 401 with a Basic challenge (so a browser asks for
/// the token) unless reads are open or the request carries the token.
pub async fn require_read_credential(
    AxState(ctx): AxState<Ctx>,
    req: Request,
    next: Next,
) -> Response {
    if ctx.open_reads || may_read(req.headers(), ctx.token.as_deref()) {
        return next.run(req).await;
    }
    let why = if ctx.token.is_some() {
        "the token from [http] token_file is needed: Authorization: Bearer <token>, or as the password of the browser's login\n"
    } else {
        "the status pages are locked: set [http] token_file (or open_reads = true on a loopback address)\n"
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"prima-node\", charset=\"UTF-8\"",
        )],
        why,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    const TOKEN: &str = "0123456789abcdef";

    #[test]
    fn reads_take_the_token_as_bearer_or_basic_password() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(may_read(&with(&format!("Bearer {TOKEN}")), Some(TOKEN)));
        assert!(may_read(
            &with(&basic(&format!("anyone:{TOKEN}"))),
            Some(TOKEN)
        ));
        assert!(!may_read(
            &with(&basic("anyone:0123456789abcdeX")),
            Some(TOKEN)
        ));
        assert!(
            !may_read(&with(&basic(TOKEN)), Some(TOKEN)),
            "no colon: no password"
        );
        assert!(!may_read(&HeaderMap::new(), Some(TOKEN)));
        assert!(
            !may_read(&with(&format!("Bearer {TOKEN}")), None),
            "no token: nobody"
        );
    }

    #[test]
    fn actions_never_take_basic_credentials() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("u:{TOKEN}"))
        );
        assert!(!may_act(&with(&basic), Some(TOKEN), None));
        assert!(
            may_act(&with(&basic), Some(TOKEN), Some(TOKEN)),
            "the form's field"
        );
        assert!(may_act(
            &with(&format!("Bearer {TOKEN}")),
            Some(TOKEN),
            None
        ));
        assert!(!may_act(&HeaderMap::new(), None, Some(TOKEN)));
    }
}
