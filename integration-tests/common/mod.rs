//! Helpers for the node integration tests: start the real `prima-node` binary with the fake
//! processor, talk to it with DCMTK's `echoscu`/`storescu`, receive results with `storescp`.
#![allow(dead_code)]

pub mod faults;
pub mod nats;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NODE_AE: &str = "PRIMA";
pub const SCU_AE: &str = "TESTSCU";
pub const DEST_AE: &str = "DEST";

/// The binary under test; `PRIMA_NODE_BIN` overrides it (the benchmarks run a release build).
pub fn bin() -> PathBuf {
    std::env::var_os("PRIMA_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_prima-node")))
}

pub fn have_dcmtk() -> bool {
    let ok = ["echoscu", "storescu", "storescp"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("DCMTK tools (echoscu, storescu, storescp) not installed");
        }
        eprintln!("SKIPPED: DCMTK tools not installed");
    }
    ok
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Node configuration knobs used by the tests.
#[derive(Clone)]
pub struct NodeOpts {
    pub port: u16,
    pub dest_port: u16,
    /// AE title of the `[[destinations]]` entry (a real PACS in the Orthanc test).
    pub dest_ae: String,
    pub quiet_s: f64,
    pub min_free_mb: u64,
    pub sources: Vec<(String, Option<String>)>,
    pub retry_initial_s: f64,
    pub retry_max_s: f64,
    pub max_associations: usize,
    pub max_attempts: u32,
    pub env: Vec<(String, String)>,
    /// Run the real Prima processor with this model instead of the fake one.
    pub model_dir: Option<PathBuf>,
    /// The node's own AE title (another node can stand in for a destination).
    pub ae_title: String,
    /// `[storage] extra_sop_classes` (e.g. Basic Text SR for a node acting as destination).
    pub extra_sop_classes: Vec<String>,
    pub read_timeout_s: u64,
    /// State directory; default `<temp dir>/state`.
    pub state_dir: Option<PathBuf>,
    /// `[model] worker_memory_mb`.
    pub worker_memory_mb: Option<u64>,
    /// More `[model]` keys (TOML lines).
    pub model_toml: String,
    /// More TOML appended to the configuration (e.g. an `[http]` section).
    pub extra_toml: String,
    /// `[model] device`.
    pub device: String,
    /// `[node] serial_number` (the reports' device identity); `None`: derived.
    pub serial_number: Option<String>,
    /// `[storage]` retention keys (TOML lines); `None`: eviction thresholds just above
    /// `min_free_mb`, so that a test never evicts unless it asks to.
    pub retention_toml: Option<String>,
    /// `[assembly] force_complete_s` (also how long a finished study is not evicted).
    pub force_complete_s: f64,
    /// More `[outbox]` keys (TOML lines).
    pub outbox_toml: String,
    /// RLIMIT_NOFILE (soft and hard) the node starts with; `None`: inherited.
    pub open_files: Option<u64>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            port: free_port(),
            dest_port: free_port(),
            dest_ae: DEST_AE.into(),
            quiet_s: 1.5,
            min_free_mb: 1,
            sources: vec![(SCU_AE.into(), Some("127.0.0.1".into()))],
            retry_initial_s: 0.5,
            retry_max_s: 1.0,
            max_associations: 16,
            max_attempts: 5,
            env: Vec::new(),
            model_dir: None,
            ae_title: NODE_AE.into(),
            extra_sop_classes: Vec::new(),
            read_timeout_s: 20,
            state_dir: None,
            worker_memory_mb: None,
            model_toml: String::new(),
            extra_toml: String::new(),
            device: "cpu".into(),
            serial_number: None,
            retention_toml: None,
            force_complete_s: 120.0,
            outbox_toml: String::new(),
            open_files: None,
        }
    }
}

pub fn config_text(o: &NodeOpts, state_dir: &Path) -> String {
    let mut s = format!(
        r#"[node]
ae_title = "{ae}"
listen = "127.0.0.1:{port}"
state_dir = "{state}"
read_timeout_s = {rt}
max_associations = {maxa}
{serial}

[model]
dir = "{model}"
device = "{device}"
{memory}
{model_toml}

[assembly]
quiet_period_s = {quiet}
force_complete_s = {force}
min_series = 2

[storage]
min_free_mb = {free}
extra_sop_classes = [{extra}]
{retention}

[outbox]
retry_initial_s = {ri}
retry_max_s = {rm}
max_attempts = {maxatt}
connect_timeout_s = 2
{outbox_toml}

[[destinations]]
ae_title = "{dae}"
host = "127.0.0.1"
port = {dport}
"#,
        port = o.port,
        ae = o.ae_title,
        rt = o.read_timeout_s,
        extra = o
            .extra_sop_classes
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
        state = state_dir.display(),
        quiet = o.quiet_s,
        force = o.force_complete_s,
        outbox_toml = o.outbox_toml,
        free = o.min_free_mb,
        retention = o.retention_toml.clone().unwrap_or_else(|| format!(
            "evict_below_free_mb = {0}\nevict_until_free_mb = {0}",
            o.min_free_mb + 1
        )),
        ri = o.retry_initial_s,
        rm = o.retry_max_s,
        dport = o.dest_port,
        dae = o.dest_ae,
        maxa = o.max_associations,
        maxatt = o.max_attempts,
        device = o.device,
        model = o
            .model_dir
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/nonexistent/model".into()),
        model_toml = o.model_toml,
        memory = o
            .worker_memory_mb
            .map(|m| format!("worker_memory_mb = {m}"))
            .unwrap_or_default(),
        serial = o
            .serial_number
            .as_deref()
            .map(|s| format!("serial_number = \"{s}\""))
            .unwrap_or_default(),
    );
    for (ae, host) in &o.sources {
        s.push_str(&format!("\n[[sources]]\nae_title = \"{ae}\"\n"));
        if let Some(h) = host {
            s.push_str(&format!("host = \"{h}\"\n"));
        }
    }
    s.push_str(&o.extra_toml);
    s
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub opts: NodeOpts,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Node {
    pub fn start(opts: NodeOpts) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let config = dir.path().join("prima-node.toml");
        std::fs::write(&config, config_text(&opts, &state_dir)).unwrap();
        let mut n = Node {
            log: dir.path().join("node.log"),
            dir,
            opts,
            config,
            state_dir,
            child: None,
            starts: 0,
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        if let Some(n) = self.opts.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&self.config)
            .env(
                "PRIMA_NODE_FAKE_PROCESSOR",
                if self.opts.model_dir.is_some() {
                    "0"
                } else {
                    "1"
                },
            )
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prima-node");
        self.child = Some(child);
        let want = self.starts;
        let ok = wait_until(Duration::from_secs(30), || {
            self.log_text().matches("prima-node ready").count() >= want
        });
        assert!(ok, "node did not become ready:\n{}", self.log_text());
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.launch();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn sigterm(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's process id (for reading its /proc status).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn status(&self) -> String {
        let out = Command::new(bin())
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn rewrite_config(&self, text: &str) {
        // Replace by rename, as config management tools do.
        let tmp = self.dir.path().join("prima-node.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn spool_objects(&self) -> Vec<PathBuf> {
        walk_files(&self.state_dir.join("spool/objects"))
    }

    pub fn spool_tmp(&self) -> Vec<PathBuf> {
        walk_files(&self.state_dir.join("spool/tmp"))
    }

    /// Where the spool keeps an instance (mirrors `Spool::path_for`).
    pub fn spool_path(&self, sop_uid: &str) -> PathBuf {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(sop_uid.as_bytes()));
        self.state_dir
            .join("spool/objects")
            .join(&h[0..2])
            .join(format!("{h}.dcm"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!("---- node log ----\n{}", self.log_text());
        }
    }
}

pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// A DCMTK `storescp` standing in for the PACS that receives results.
pub struct StoreScp {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl StoreScp {
    pub fn start(port: u16) -> StoreScp {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("storescp")
            .args(["-aet", DEST_AE, "+uf", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start storescp");
        // Ready when it accepts TCP connections.
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        StoreScp { dir, child }
    }

    /// SOP Instance UIDs of every file received (one entry per file, duplicates kept).
    pub fn received(&self) -> Vec<(String, String)> {
        self.received_objects()
            .into_iter()
            .map(|(sop, study, _)| (sop, study))
            .collect()
    }

    /// (SOP Instance UID, Study Instance UID, parsed object) of every file received.
    pub fn received_objects(&self) -> Vec<(String, String, dicom_object::DefaultDicomObject)> {
        let mut v = Vec::new();
        for p in walk_files(self.dir.path()) {
            if let Ok(obj) = dicom_object::open_file(&p) {
                let get = |t| {
                    obj.element(t)
                        .ok()
                        .and_then(|e| {
                            e.to_str()
                                .ok()
                                .map(|s| s.trim_end_matches('\0').to_string())
                        })
                        .unwrap_or_default()
                };
                let sop = get(dicom_dictionary_std::tags::SOP_INSTANCE_UID);
                let study = get(dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
                v.push((sop, study, obj));
            }
        }
        v
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn echoscu(port: u16, calling: &str, called: &str) -> Output {
    Command::new("echoscu")
        .args(["-aet", calling, "-aec", called, "127.0.0.1"])
        .arg(port.to_string())
        .env("TCP_NODELAY", "1")
        .output()
        .expect("run echoscu")
}

/// Send files with `storescu -v` in one association; returns its output.
pub fn storescu(port: u16, calling: &str, files: &[PathBuf]) -> Output {
    Command::new("storescu")
        .args(["-v", "-aet", calling, "-aec", NODE_AE, "127.0.0.1"])
        .arg(port.to_string())
        .args(files)
        .env("TCP_NODELAY", "1")
        .output()
        .expect("run storescu")
}

/// Start `storescu -v` in the background, its output going to `log`.
pub fn storescu_spawn(port: u16, calling: &str, files: &[PathBuf], log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    Command::new("storescu")
        .args(["-v", "-aet", calling, "-aec", NODE_AE, "127.0.0.1"])
        .arg(port.to_string())
        .args(files)
        .env("TCP_NODELAY", "1")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("run storescu")
}

/// Files storescu reported Success for, from its `-v` output.
pub fn acknowledged_files(storescu_output: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut acked = Vec::new();
    for line in BufReader::new(storescu_output.as_bytes())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(p) = line.split("Sending file: ").nth(1) {
            current = Some(PathBuf::from(p.trim()));
        } else if line.contains("Received Store Response (Success)") {
            if let Some(p) = current.take() {
                acked.push(p);
            }
        }
    }
    acked
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The study's files, grouped by series folder, sorted.
pub fn study_series(fixtures: &Path, study: &str) -> Vec<Vec<PathBuf>> {
    let root = fixtures.join("studies").join(study);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let mut f = walk_files(&d);
            f.sort();
            f
        })
        .collect()
}

/// A UI attribute of a file's header, without padding.
pub fn uid_of(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

pub fn sop_uid_of(path: &Path) -> String {
    uid_of(path, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
}

pub fn study_uid_of(path: &Path) -> String {
    uid_of(path, dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
}

pub fn series_uid_of(path: &Path) -> String {
    uid_of(path, dicom_dictionary_std::tags::SERIES_INSTANCE_UID)
}

/// Send each series in its own association, `parallel` at a time; panics if any failed.
pub fn send_study(port: u16, series: &[Vec<PathBuf>], parallel: usize) {
    for chunk in series.chunks(parallel.max(1)) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|files| std::thread::spawn(move || storescu(port, SCU_AE, &files)))
            .collect();
        for h in handles {
            let o = h.join().unwrap();
            assert!(o.status.success(), "storescu failed:\n{}", text(&o));
        }
    }
}

/// Pids of the processes whose parent is `pid` (the node's worker).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(child);
        }
    }
    v
}

/// A minimal A-ASSOCIATE-RQ (Verification, Implicit VR LE) from `calling` to the node.
pub fn associate_rq(calling: &str) -> Vec<u8> {
    fn item(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t, 0];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
    let pad = |s: &str| format!("{s:<16}").into_bytes();
    let mut body = vec![0, 1, 0, 0];
    body.extend(pad(NODE_AE));
    body.extend(pad(calling));
    body.extend([0u8; 32]);
    body.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    let mut pc = vec![1, 0, 0, 0];
    pc.extend(item(0x30, b"1.2.840.10008.1.1"));
    pc.extend(item(0x40, b"1.2.840.10008.1.2"));
    body.extend(item(0x20, &pc));
    let mut ui = item(0x51, &16384u32.to_be_bytes());
    ui.extend(item(0x52, b"1.2.3.4"));
    body.extend(item(0x50, &ui));
    let mut pdu = vec![0x01, 0];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend(body);
    pdu
}
