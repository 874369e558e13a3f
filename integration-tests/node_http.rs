//! The status surface of a running node (`[http]`): a study sent with DCMTK, processed by
//! the fixture model and delivered to a DCMTK `storescp`, then seen through the JSON API,
//! the HTML pages (hostile DICOM strings escaped), `/metrics` (counters moved by the right
//! amounts, the text parseable), the health endpoints and the two actions (token needed,
//! each audited).
mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, NodeOpts, StoreScp};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use serde_json::Value;

const HOSTILE: &str = "<script>alert('pwn')</script>";

/// The status page's token in these tests.
const TOKEN: &str = "t0ken-for-the-status-page-test";

/// (status, body) of a request made with curl, reading as a browser would once its user
/// typed the token into the login dialog (HTTP Basic).
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    curl_as(Some(&format!("radiologist:{TOKEN}")), url, args)
}

/// (status, body) of a request made with curl, with `user:password` Basic credentials.
fn curl_as(basic: Option<&str>, url: &str, args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    if let Some(b) = basic {
        cmd.args(["-u", b]);
    }
    let out = cmd
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn get_json(base: &str, path: &str) -> Value {
    let (code, body) = curl(&format!("{base}{path}"), &[]);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Samples of the Prometheus/OpenMetrics text: every line must be a comment or
/// `name{labels} value` with a number as value, and the text must end with `# EOF`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF:\n{text}");
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((series.to_string(), v));
    }
    out
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

/// STUDY_A with a script in PatientName and in the first series' SeriesDescription.
fn hostile_copy(series: &[Vec<PathBuf>], dir: &Path) -> Vec<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (k, files) in series.iter().enumerate() {
        let mut v = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let mut obj = dicom_object::open_file(f).unwrap();
            obj.put(DataElement::new(
                tags::PATIENT_NAME,
                VR::PN,
                PrimitiveValue::from(HOSTILE),
            ));
            if k == 0 {
                obj.put(DataElement::new(
                    tags::SERIES_DESCRIPTION,
                    VR::LO,
                    PrimitiveValue::from(HOSTILE),
                ));
            }
            let p = dir.join(format!("s{k}-{i}.dcm"));
            obj.write_to_file(&p).unwrap();
            v.push(p);
        }
        out.push(v);
    }
    out
}

/// Headless Chromium (Debian's package, installed by scripts/setup.sh) renders the overview
/// and the study page: the DOM it built has the tables, the hostile strings as text, and no
/// script element. Screenshots go to `PRIMA_SCREENSHOT_DIR` (docs/examples/ when they are
/// refreshed), else a temporary directory.
fn browser_check(base: &str, study_uid: &str) {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "chromium not installed (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: chromium not installed");
        return;
    }
    let shots = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("PRIMA_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shots.path().to_path_buf());
    let profile = tempfile::tempdir().unwrap();
    let run = |args: &[String]| {
        let o = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("run chromium");
        assert!(o.status.success(), "chromium {args:?} failed");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    for (url, name, want) in [
        (
            format!("{base}/"),
            "status-overview.png",
            "Studies by state",
        ),
        (
            format!("{base}/studies/{study_uid}"),
            "status-study.png",
            "Stages of the latest run",
        ),
    ] {
        let dom = run(&["--dump-dom".to_string(), url.clone()]);
        assert!(dom.contains(want), "{url}: {want:?} not in the DOM:\n{dom}");
        assert!(dom.contains("<table>"), "{url}: no table in the DOM");
        assert!(
            !dom.contains("<script"),
            "{url}: a script element in the DOM"
        );
        if url.contains("/studies/") {
            assert!(
                dom.contains("&lt;script&gt;alert('pwn')&lt;/script&gt;"),
                "the hostile name is not text in the DOM"
            );
        }
        let shot = dir.join(name);
        run(&[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1000".to_string(),
            url,
        ]);
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            shot.display()
        );
    }
}

#[test]
fn status_pages_api_metrics_and_actions_of_a_processed_study() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    if !common::have_dcmtk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    let token = TOKEN;
    let token_file = tmp.path().join("http-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let http_port = common::free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model),
        extra_toml: format!(
            "\n[http]\nlisten = \"127.0.0.1:{http_port}\"\ntoken_file = \"{}\"\nshow_patient_identifiers = true\n",
            token_file.display()
        ),
        ..NodeOpts::default()
    });
    assert!(
        common::wait_until(Duration::from_secs(20), || curl(
            &format!("{base}/healthz"),
            &[]
        )
        .0 == 200),
        "no /healthz:\n{}",
        node.log_text()
    );
    // Reads need the token (Bearer, or a browser's Basic login); the probes do not.
    let (code, head) = curl_as(None, &format!("{base}/api/studies"), &["-D", "-"]);
    assert_eq!(code, 401, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"prima-node\""),
        "{head}"
    );
    for path in ["/", "/studies", "/outbox", "/associations", "/api/overview"] {
        assert_eq!(
            curl_as(None, &format!("{base}{path}"), &[]).0,
            401,
            "{path}"
        );
        assert_eq!(
            curl_as(
                Some("radiologist:wrong-token-wrong-token"),
                &format!("{base}{path}"),
                &[]
            )
            .0,
            401,
            "{path}"
        );
    }
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        curl_as(None, &format!("{base}/api/studies"), &["-H", &bearer]).0,
        200
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            curl_as(None, &format!("{base}{path}"), &[]).0,
            200,
            "{path}"
        );
    }
    let before = parse_metrics(&curl(&format!("{base}/metrics"), &[]).1);
    let received0 = sample(&before, "prima_node_instances_received_total");
    // Every response tells the browser to load nothing from elsewhere, not to sniff
    // types, not to frame or keep the page, not to send its address on.
    for path in ["/", "/api/studies", "/healthz", "/no-such-page"] {
        let (_, head) = curl(&format!("{base}{path}"), &["-D", "-", "-o", "/dev/null"]);
        let head = head.to_ascii_lowercase();
        for want in [
            "x-content-type-options: nosniff",
            "content-security-policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "x-frame-options: deny",
            "referrer-policy: no-referrer",
            "cache-control: no-store",
        ] {
            assert!(head.contains(want), "GET {path}: no {want:?} in\n{head}");
        }
    }

    let series = hostile_copy(&common::study_series(&root, "STUDY_A"), tmp.path());
    let n_files: usize = series.iter().map(Vec::len).sum();
    common::send_study(node.opts.port, &series, 2);
    let study_uid = common::study_uid_of(&series[0][0]);
    let delivered = common::wait_until(Duration::from_secs(240), || {
        let d = get_json(&base, &format!("/api/studies/{study_uid}"));
        let dels = d["deliveries"].as_array().cloned().unwrap_or_default();
        dels.len() == 2 && dels.iter().all(|x| x["state"] == "done")
    });
    assert!(delivered, "outputs not delivered:\n{}", node.log_text());
    assert_eq!(pacs.received_objects().len(), 2);

    // The JSON API: the study, its timeline stages and its outbox.
    let list = get_json(&base, "/api/studies");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "done");
    assert_eq!(list[0]["instances"], n_files as u64);
    assert_eq!(list[0]["header"]["patient_name"], HOSTILE);
    assert!(list[0]["priority"].is_string(), "{}", list[0]);
    assert!(list[0]["time_to_result_s"].as_f64().unwrap() > 0.0);
    let detail = get_json(&base, &format!("/api/studies/{study_uid}"));
    let timings = &detail["run"]["timings"];
    for stage in ["prepare_s", "vqvae_s", "prima_s", "total_s"] {
        assert!(timings[stage].is_number(), "no {stage} in {timings}");
    }
    assert_eq!(detail["jobs"][0]["state"], "done");
    let attempts = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "delivery_attempt")
        .count();
    assert_eq!(attempts, 2, "{}", detail["events"]);
    let done_filter = get_json(&base, "/api/studies?state=failed");
    assert_eq!(done_filter.as_array().unwrap().len(), 0);
    assert_eq!(get_json(&base, "/api/outbox").as_array().unwrap().len(), 0);
    let overview = get_json(&base, "/api/overview");
    assert_eq!(overview["queue_depth"], 0);
    assert_eq!(overview["model"]["demo"], false);

    // The pages render the hostile strings escaped, and link the JSON.
    let (code, page) = curl(&format!("{base}/studies/{study_uid}"), &[]);
    assert_eq!(code, 200);
    assert!(!page.contains("<script"), "unescaped script in the page");
    assert!(page.contains("&lt;script&gt;alert(&#39;pwn&#39;)&lt;/script&gt;"));
    assert!(page.contains("run.json") && page.contains("predictions.json"));
    assert!(page.contains("VQ-VAE"), "stage seconds on the page");
    for path in ["/", "/studies", "/outbox", "/associations"] {
        let (code, body) = curl(&format!("{base}{path}"), &[]);
        assert_eq!(code, 200, "{path}");
        assert!(!body.contains("<script"), "{path}");
    }
    let (code, run) = curl(&format!("{base}/studies/{study_uid}/run.json"), &[]);
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<Value>(&run).is_ok());

    // The browser signs in as a user who typed the token into its login dialog would.
    let signed_in = base.replace("http://", &format!("http://radiologist:{TOKEN}@"));
    browser_check(&signed_in, &study_uid);

    // Metrics moved by what happened.
    let after = parse_metrics(&curl(&format!("{base}/metrics"), &[]).1);
    assert_eq!(
        sample(&after, "prima_node_instances_received_total") - received0,
        n_files as f64
    );
    assert_eq!(
        sample(&after, "prima_node_studies_total{reason=\"processed\"}"),
        1.0
    );
    let dest = format!("PACS@127.0.0.1:{pacs_port}");
    let delivered_series = after
        .iter()
        .find(|(s, _)| s.starts_with("prima_node_outputs_total") && s.contains("delivered"))
        .unwrap_or_else(|| panic!("no delivered outputs in the metrics (destination {dest})"));
    assert_eq!(delivered_series.1, 2.0, "{delivered_series:?}");
    assert_eq!(
        sample(&after, "prima_node_stage_seconds_count{stage=\"vqvae\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "prima_node_result_latency_seconds_count"),
        1.0
    );
    assert!(sample(&after, "prima_node_cstore_seconds_count") >= n_files as f64);
    assert!(
        sample(
            &after,
            "prima_node_associations_total{outcome=\"accepted\",reason=\"\"}"
        ) >= 1.0
    );
    assert!(sample(&after, "prima_node_free_disk_bytes") > 0.0);
    assert_eq!(curl(&format!("{base}/readyz"), &[]).0, 200);

    // Actions: refused without the token — the browser's Basic login that reads the pages is
    // not enough (another site's form would carry it: CSRF) — done and audited with it.
    let form = format!("study_uid={study_uid}");
    let (code, _) = curl(&format!("{base}/actions/rerun-study"), &["-d", &form]);
    assert_eq!(code, 401);
    let (code, _) = curl(
        &format!("{base}/actions/rerun-study"),
        &["-d", &format!("{form}&token=wrong-token-wrong-token-x")],
    );
    assert_eq!(code, 401);
    let (code, _) = curl(&format!("{base}/actions/retry-delivery"), &["-d", "id=1"]);
    assert_eq!(code, 401);
    let auth = format!("Authorization: Bearer {token}");
    let (code, _) = curl(
        &format!("{base}/actions/rerun-study"),
        &["-H", &auth, "-d", &form],
    );
    assert_eq!(code, 303);
    let (code, _) = curl(
        &format!("{base}/actions/retry-delivery"),
        &["-d", &format!("id=1&token={token}")],
    );
    assert_eq!(code, 303);
    let audit = get_json(&base, "/api/associations");
    let events: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap())
        .collect();
    for e in [
        "action_rerun_study",
        "action_retry_delivery",
        "association_accepted",
    ] {
        assert!(events.contains(&e), "{e} not audited: {events:?}");
    }
    // The re-run gives the same objects (same inputs, same model): nothing new is sent.
    let rerun_done = common::wait_until(Duration::from_secs(120), || {
        let d = get_json(&base, &format!("/api/studies/{study_uid}"));
        d["jobs"].as_array().unwrap().len() == 2 && d["summary"]["state"] == "done"
    });
    assert!(rerun_done, "re-run did not finish:\n{}", node.log_text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pacs.received_objects().len(),
        2,
        "results land exactly once"
    );
}

/// Issue 29: the overview says whether the file on disk is what is in force: an edit of a
/// restart-only section is named as waiting for a restart, a broken file as refused (the
/// previous configuration in force).
#[test]
fn the_overview_says_whether_the_configuration_file_is_in_force() {
    if !common::have_dcmtk() {
        return;
    }
    let http_port = common::free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let node = Node::start(NodeOpts {
        extra_toml: format!("\n[http]\nlisten = \"127.0.0.1:{http_port}\"\nopen_reads = true\n"),
        ..NodeOpts::default()
    });
    assert!(common::wait_until(Duration::from_secs(20), || curl(
        &format!("{base}/healthz"),
        &[]
    )
    .0 == 200));
    let on_disk = || get_json(&base, "/api/overview")["config"]["on_disk"].clone();
    assert_eq!(on_disk()["file"], "in_force", "{}", on_disk());
    let text = std::fs::read_to_string(&node.config).unwrap();
    node.rewrite_config(&text.replace("read_timeout_s = 20", "read_timeout_s = 21"));
    assert!(
        common::wait_until(Duration::from_secs(10), || on_disk()["file"]
            == "needs_restart"),
        "{}",
        on_disk()
    );
    assert_eq!(on_disk()["sections"][0], "[node]");
    assert!(curl(&format!("{base}/"), &[])
        .1
        .contains("the file differs in [node]"));
    node.rewrite_config("[node]\nnot toml");
    assert!(
        common::wait_until(Duration::from_secs(10), || on_disk()["file"] == "refused"),
        "{}",
        on_disk()
    );
    assert!(curl(&format!("{base}/"), &[])
        .1
        .contains("the previous configuration stays in force"));
}
