//! The CPU Debian package (`scripts/package.sh`) in a clean Debian 12 root made with
//! `mmdebstrap`: install, demo model, the node from the installed files as the service user
//! receiving a study from DCMTK outside the root and sending its SR and KOS back; then an
//! upgrade with a study in the spool and deliveries pending (nothing lost, delivered once);
//! then remove and purge.
//!
//! Needs root, mmdebstrap, DCMTK and a package built beforehand (`scripts/package.sh`;
//! the release build is too slow to run inside the test): `PRIMA_DEB=path`, else the
//! newest `dist/prima-node_*_amd64.deb`. Skips without them, fails under `CI=true` (a
//! missing package only with `PRIMA_REQUIRE_DEB`: `scripts/package.sh --test`).
//! The root comes from a tarball cached under `~/.cache/prima-node/debian-root/`, one per
//! month (security updates arrive monthly at most; CI downloads once a month).

mod common;
mod fixtures;

use common::{free_port, have_dcmtk, wait_until, StoreScp, DEST_AE, NODE_AE, SCU_AE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What the root holds beyond minbase: the package's dependencies, so that installing it
/// needs no network, systemd, to check the unit against the installed files (not run:
/// a chroot has no init), and the package's Recommends (python3-numpy brings python3), for
/// `model import`. Part of the cached tarball's name: a change here makes a new root.
const ROOT_PACKAGES: &str = "adduser,libstdc++6,libgcc-s1,systemd,python3-numpy";
const SUITE: &str = "bookworm";
const SERVICE_USER: &str = "prima-node";
const CONFIG: &str = "/etc/prima-node/prima-node.toml";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (false) with a message, or fails under CI=true.
fn require(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(!ci(), "{what}");
        eprintln!("SKIPPED: {what}");
    }
    ok
}

/// The package takes a release build (minutes): the test command does not make one, so
/// without a package the tests say so and stop, unless `PRIMA_REQUIRE_DEB` is set
/// (`scripts/package.sh --test` and `scripts/reliability.sh` build one and set it).
fn no_package() {
    let what = "no package: run scripts/package.sh --test (or set PRIMA_DEB)";
    assert!(std::env::var_os("PRIMA_REQUIRE_DEB").is_none(), "{what}");
    eprintln!("SKIPPED: {what}");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The package under test: `PRIMA_DEB`, else the newest in dist/.
fn package() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PRIMA_DEB") {
        return Some(PathBuf::from(p));
    }
    let mut debs: Vec<_> = std::fs::read_dir(repo().join("dist"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("prima-node_")
                && p.extension().is_some_and(|e| e == "deb")
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
}

fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/prima-node/debian-root")
}

/// The cached minbase tarball of this month, made once with mmdebstrap.
fn root_tarball() -> PathBuf {
    let month = stdout(&run(Command::new("date").args(["-u", "+%Y-%m"])));
    let name = format!(
        "debian12-{SUITE}-minbase-{}-{}.tar",
        month.trim(),
        ROOT_PACKAGES.replace(',', "+")
    );
    let tar = cache_dir().join(name);
    if !tar.exists() {
        std::fs::create_dir_all(cache_dir()).unwrap();
        let part = tar.with_extension("tar.part");
        eprintln!("making the Debian root {} (once a month)", tar.display());
        run(Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase", "--format=tar"])
            .arg(format!("--include={ROOT_PACKAGES}"))
            .arg(SUITE)
            .arg(&part)
            .arg("http://deb.debian.org/debian"));
        std::fs::rename(&part, &tar).unwrap();
    }
    tar
}

/// A Debian root unpacked in a temporary directory, /proc mounted (the node reads
/// /proc/self/exe to start its worker). Unmounts before the directory is deleted.
struct Root {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Root {
    fn new() -> Root {
        let tar = root_tarball();
        let dir = tempfile::Builder::new()
            .prefix("prima-deb-root")
            .tempdir_in("/var/tmp")
            .unwrap();
        run(Command::new("tar")
            .args(["-xf"])
            .arg(&tar)
            .arg("-C")
            .arg(dir.path()));
        let mut root = Root {
            dir,
            mounts: Vec::new(),
        };
        let proc_dir = root.path().join("proc");
        run(Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc_dir));
        root.mounts.push(proc_dir);
        root
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file inside the root, by its absolute path there.
    fn file(&self, abs: &str) -> PathBuf {
        self.path().join(abs.trim_start_matches('/'))
    }

    fn chroot(&self) -> Command {
        self.chroot_under(&[])
    }

    /// `chroot` into the root, started by `wrapper` (e.g. `unshare --net`) when not empty.
    fn chroot_under(&self, wrapper: &[&str]) -> Command {
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("chroot");
                c
            }
            None => Command::new("chroot"),
        };
        c.arg(self.path())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C.UTF-8");
        c
    }

    /// A command run inside the root as the service user.
    fn as_service(&self, args: &[&str]) -> Command {
        let mut c = self.chroot();
        c.args([
            "setpriv",
            &format!("--reuid={SERVICE_USER}"),
            &format!("--regid={SERVICE_USER}"),
            "--clear-groups",
            "--",
        ])
        .args(args);
        c
    }

    /// Installs a package file with apt, offline: in a network namespace of its own (only
    /// a loopback, down), the dependencies already in the root.
    fn install(&self, deb: &Path) -> Duration {
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(deb, self.file("/tmp").join(&name)).unwrap();
        let t0 = Instant::now();
        run(self
            .chroot_under(&["unshare", "--net"])
            .args(["apt-get", "install", "-y", "--no-install-recommends"])
            .arg(format!("/tmp/{name}")));
        let took = t0.elapsed();
        std::fs::remove_file(self.file("/tmp").join(&name)).unwrap();
        took
    }

    fn installed_version(&self) -> Option<String> {
        self.installed_version_of("prima-node")
    }

    fn installed_version_of(&self, package: &str) -> Option<String> {
        let out = self
            .chroot()
            .args(["dpkg-query", "-W", "-f=${Status} ${Version}", package])
            .output()
            .unwrap();
        let s = stdout(&out);
        s.starts_with("install ok installed")
            .then(|| s.rsplit(' ').next().unwrap().to_string())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let root = self.path().to_string_lossy().into_owned();
        if mounts.lines().any(|l| l.contains(&root)) {
            // Never delete through a mount: leave the directory (and say so).
            eprintln!("{root} still has mounts; left in place");
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        }
    }
}

/// `prima-node serve` inside the root as the service user; its log outside.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Served {
    fn start(root: &Root, log: PathBuf, port: u16) -> Served {
        let child = root
            .as_service(&["/usr/bin/prima-node", "serve", "--config", CONFIG])
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Served { child, log };
        let up = wait_until(Duration::from_secs(60), || {
            common::echoscu(port, SCU_AE, NODE_AE).status.success()
        });
        assert!(up, "node did not answer C-ECHO:\n{}", s.log_text());
        assert!(s.child.try_wait().unwrap().is_none());
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd stops it; the node must exit 0.
    fn stop(mut self) {
        // SAFETY: a signal to our own child (chroot and setpriv exec the node).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "node exited {st}:\n{}", self.log_text());
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_config(port: u16, dest_port: u16) -> String {
    format!(
        r#"[node]
ae_title = "{NODE_AE}"
listen = "127.0.0.1:{port}"
state_dir = "/var/lib/prima-node"

[model]
dir = "/var/lib/prima-node/model"
device = "cpu"

[assembly]
quiet_period_s = 4
force_complete_s = 120
min_series = 2

[storage]
min_free_mb = 100
evict_below_free_mb = 200
evict_until_free_mb = 300

[outbox]
retry_initial_s = 1
retry_max_s = 2

[[sources]]
ae_title = "{SCU_AE}"
host = "127.0.0.1"

[[destinations]]
ae_title = "{DEST_AE}"
host = "127.0.0.1"
port = {dest_port}
"#
    )
}

/// A synthetic study written by the installed binary; returns its folder (outside path).
fn synth_study(root: &Root, name: &str, seed: u32) -> PathBuf {
    let inside = format!("/tmp/{name}");
    run(root.chroot().args([
        "/usr/bin/prima-node",
        "synth-study",
        "--out",
        &inside,
        "--seed",
        &seed.to_string(),
    ]));
    root.file(&inside)
}

/// Sends a folder with storescu from outside the root; every instance must be accepted.
fn send(port: u16, dir: &Path) {
    let out = run(Command::new("storescu")
        .args(["-aet", SCU_AE, "-aec", NODE_AE, "+sd", "+r", "127.0.0.1"])
        .arg(port.to_string())
        .arg(dir)
        .env("TCP_NODELAY", "1"));
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("Status: "), "a store was refused:\n{all}");
}

const KOS_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.59";

/// (SR count, KOS count) received for a study.
fn outputs_for(dest: &StoreScp, study: &str) -> (usize, usize) {
    let mut sr = 0;
    let mut kos = 0;
    for (_, st, obj) in dest.received_objects() {
        if st != study {
            continue;
        }
        let class = obj
            .meta()
            .media_storage_sop_class_uid
            .trim_end_matches('\0');
        if class == KOS_CLASS {
            kos += 1;
        } else if class.starts_with("1.2.840.10008.5.1.4.1.1.88.") {
            sr += 1;
        }
    }
    (sr, kos)
}

fn study_uid(dir: &Path) -> String {
    let f = common::walk_files(dir)
        .into_iter()
        .next()
        .expect("a study file");
    common::study_uid_of(&f)
}

fn status(root: &Root) -> String {
    stdout(&run(root.as_service(&[
        "/usr/bin/prima-node",
        "status",
        "--config",
        CONFIG,
    ])))
}

/// The same package under the next version: what an upgrade installs, without a rebuild.
fn next_version(deb: &Path, dir: &Path) -> (PathBuf, String) {
    let tree = dir.join("tree");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let old = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap()
        .to_string();
    let new = format!("{old}+next1");
    std::fs::write(
        &control,
        text.replace(&format!("Version: {old}\n"), &format!("Version: {new}\n")),
    )
    .unwrap();
    let out = dir.join(format!("prima-node_{new}_amd64.deb"));
    // No compression: the test needs a package, not a small one.
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "-b"])
        .arg(&tree)
        .arg(&out));
    std::fs::remove_dir_all(&tree).unwrap();
    (out, new)
}

fn mode_and_owner(root: &Root, abs: &str) -> String {
    stdout(&run(root.chroot().args(["stat", "-c", "%a %U:%G", abs])))
        .trim()
        .to_string()
}

#[test]
fn the_package_installs_serves_upgrades_and_purges_in_a_clean_debian_root() {
    // SAFETY: geteuid has no preconditions.
    if !require(
        unsafe { libc::geteuid() } == 0,
        "not root: chroot and mounts need root",
    ) {
        return;
    }
    if !require(
        have("mmdebstrap"),
        "mmdebstrap not installed (scripts/setup.sh)",
    ) || !have_dcmtk()
    {
        return;
    }
    let Some(deb) = package() else {
        no_package();
        return;
    };
    let t_all = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let root = Root::new();
    eprintln!("root ready in {:.1} s", t_all.elapsed().as_secs_f64());

    // ---- install ----
    let took = root.install(&deb);
    eprintln!("{} installed in {:.1} s", deb.display(), took.as_secs_f64());
    let v1 = root.installed_version().expect("installed");
    let ldd = stdout(&run(root.chroot().args(["ldd", "/usr/bin/prima-node"])));
    assert!(!ldd.contains("not found"), "{ldd}");
    assert!(
        !ldd.contains("cuda.so") && !ldd.contains("libcublas"),
        "{ldd}"
    );
    assert_eq!(
        mode_and_owner(&root, "/var/lib/prima-node"),
        "700 prima-node:prima-node"
    );
    // The unit as systemd reads it, against the installed files.
    let out = root
        .chroot()
        .args([
            "systemd-analyze",
            "verify",
            "--man=no",
            "/lib/systemd/system/prima-node.service",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ---- model and the shipped configuration ----
    run(root.as_service(&[
        "/usr/bin/prima-node",
        "model",
        "demo",
        "--out",
        "/var/lib/prima-node/model",
        "--size",
        "small",
    ]));
    run(root.as_service(&["/usr/bin/prima-node", "check-config", CONFIG]));

    // ---- the node, from the installed files, as the service user ----
    let port = free_port();
    let dest_port = free_port();
    std::fs::write(root.file(CONFIG), node_config(port, dest_port)).unwrap();
    run(root.as_service(&["/usr/bin/prima-node", "check-config", CONFIG]));
    let study1 = synth_study(&root, "study1", 1);
    let study1_uid = study_uid(&study1);
    let dest = StoreScp::start(dest_port);
    let node = Served::start(&root, work.path().join("node1.log"), port);
    let t0 = Instant::now();
    send(port, &study1);
    assert!(
        wait_until(Duration::from_secs(180), || outputs_for(&dest, &study1_uid)
            == (1, 1)),
        "no SR and KOS for the first study:\n{}",
        node.log_text()
    );
    eprintln!(
        "first study: SR and KOS back in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // ---- the destination goes down: a study's results wait in the outbox ----
    drop(dest);
    let study2 = synth_study(&root, "study2", 2);
    let study2_uid = study_uid(&study2);
    send(port, &study2);
    let pending = |s: &str| {
        s.lines()
            .filter(|l| l.contains(" -> ") && l.contains(" pending ") && l.contains("attempts="))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(180), || pending(&status(&root)) >= 2),
        "no pending deliveries:\n{}\n{}",
        status(&root),
        node.log_text()
    );
    // ... and a third study is in the spool, not yet complete, when the node stops.
    let study3 = synth_study(&root, "study3", 3);
    let study3_uid = study_uid(&study3);
    send(port, &study3);
    node.stop();

    // ---- upgrade ----
    let (next, v2) = next_version(&deb, work.path());
    let took = root.install(&next);
    eprintln!("upgrade {v1} -> {v2} in {:.1} s", took.as_secs_f64());
    assert_eq!(root.installed_version().as_deref(), Some(v2.as_str()));
    // The administrator's configuration, the state and the model stay.
    assert_eq!(
        std::fs::read_to_string(root.file(CONFIG)).ok(),
        Some(node_config(port, dest_port)),
        "the configuration did not survive the upgrade"
    );
    assert_eq!(
        mode_and_owner(&root, "/var/lib/prima-node"),
        "700 prima-node:prima-node"
    );
    assert!(
        root.file("/var/lib/prima-node/model").exists(),
        "the model did not survive the upgrade"
    );
    let st = status(&root);
    assert!(pending(&st) >= 2, "pending deliveries lost:\n{st}");

    // ---- the new version delivers what waited, once ----
    let dest = StoreScp::start(dest_port);
    let node = Served::start(&root, work.path().join("node2.log"), port);
    assert!(
        wait_until(Duration::from_secs(180), || {
            outputs_for(&dest, &study2_uid) == (1, 1) && outputs_for(&dest, &study3_uid) == (1, 1)
        }),
        "after the upgrade: study 2 {:?}, study 3 {:?}\n{}",
        outputs_for(&dest, &study2_uid),
        outputs_for(&dest, &study3_uid),
        node.log_text()
    );
    // Longer than a retry interval: a second delivery would have arrived.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(outputs_for(&dest, &study2_uid), (1, 1));
    assert_eq!(outputs_for(&dest, &study3_uid), (1, 1));
    assert_eq!(
        outputs_for(&dest, &study1_uid),
        (0, 0),
        "study 1 sent again"
    );
    let received = dest.received();
    let mut uids: Vec<_> = received.iter().map(|(sop, _)| sop.clone()).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), received.len(), "an output delivered twice");
    node.stop();

    // ---- remove keeps configuration and state; purge deletes them ----
    run(root
        .chroot()
        .args(["apt-get", "remove", "-y", "prima-node"]));
    assert!(root.installed_version().is_none());
    assert!(!root.file("/usr/bin/prima-node").exists());
    assert!(!root.file("/usr/lib/prima-node").exists());
    assert!(root.file(CONFIG).exists());
    assert!(root.file("/var/lib/prima-node/model").exists());
    run(root.chroot().args(["apt-get", "purge", "-y", "prima-node"]));
    assert!(!root.file("/etc/prima-node").exists());
    assert!(!root.file("/var/lib/prima-node").exists());
    eprintln!("wall time {:.1} s", t_all.elapsed().as_secs_f64());
}

/// `bytes` with one byte inside the zip member named `*/data.pkl` (the pickle) inverted.
fn tamper_pickle(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let mut at = 0;
    while let Some(i) = b[at..].windows(4).position(|w| w == b"PK\x03\x04") {
        let h = at + i;
        let u16_at = |o: usize| u16::from_le_bytes([b[h + o], b[h + o + 1]]) as usize;
        let size = u32::from_le_bytes(b[h + 18..h + 22].try_into().unwrap()) as usize;
        let (name_len, extra_len) = (u16_at(26), u16_at(28));
        let name = &b[h + 30..h + 30 + name_len];
        if name.ends_with(b"/data.pkl") {
            assert_eq!(u16_at(8), 0, "data.pkl is compressed; torch.save stores it");
            let data = h + 30 + name_len + extra_len;
            b[data + size / 2] ^= 0xff;
            return b;
        }
        at = h + 4;
    }
    panic!("no data.pkl in the checkpoint");
}

/// What a site does with the package and the official checkpoints (here the fixture
/// checkpoints, same format): `model import` as the service user with the Debian python3
/// and numpy, then `infer` with the imported model, against upstream's predictions. A
/// checkpoint whose pickle was altered is refused and leaves nothing behind.
#[test]
fn model_import_in_a_clean_debian_root_matches_upstream() {
    // SAFETY: geteuid has no preconditions.
    if !require(
        unsafe { libc::geteuid() } == 0,
        "not root: chroot and mounts need root",
    ) {
        return;
    }
    if !require(
        have("mmdebstrap"),
        "mmdebstrap not installed (scripts/setup.sh)",
    ) {
        return;
    }
    let Some(reference) = fixtures::reference_dir() else {
        return;
    };
    let Some(deb) = package() else {
        no_package();
        return;
    };
    let t_all = Instant::now();
    let root = Root::new();
    root.install(&deb);

    // The files as a site would copy them onto the server, readable by the service user.
    let ckpt = root.file("/tmp/checkpoints");
    std::fs::create_dir_all(&ckpt).unwrap();
    let models = reference.join("models");
    let pt = std::fs::read(models.join("prima/primafullmodel_fixture.pt")).unwrap();
    std::fs::write(ckpt.join("primafullmodel_fixture.pt"), &pt).unwrap();
    std::fs::write(ckpt.join("tampered.pt"), tamper_pickle(&pt)).unwrap();
    for f in ["vqvae_reduced.pth", "tokenizer_config.json"] {
        std::fs::copy(models.join("tokenizer").join(f), ckpt.join(f)).unwrap();
    }
    run(Command::new("cp")
        .arg("-r")
        .arg(reference.join("studies/STUDY_A"))
        .arg(root.file("/tmp/STUDY_A")));
    run(Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&ckpt)
        .arg(root.file("/tmp/STUDY_A")));
    let import = |prima: &str, out: &str| {
        root.as_service(&[
            "/usr/bin/prima-node",
            "model",
            "import",
            "--prima",
            &format!("/tmp/checkpoints/{prima}"),
            "--tokenizer",
            "/tmp/checkpoints/vqvae_reduced.pth",
            "--tokenizer-config",
            "/tmp/checkpoints/tokenizer_config.json",
            "--out",
            out,
        ])
        .output()
        .unwrap()
    };

    // ---- a tampered checkpoint: refused, nothing written ----
    let out = import("tampered.pt", "/var/lib/prima-node/tampered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "tampered checkpoint imported:\n{err}"
    );
    eprintln!("tampered checkpoint: {}", err.trim());
    let left: Vec<_> = std::fs::read_dir(root.file("/var/lib/prima-node"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the refused import left {left:?}");

    // ---- the real one ----
    let t0 = Instant::now();
    let out = import("primafullmodel_fixture.pt", "/var/lib/prima-node/model");
    assert!(
        out.status.success(),
        "model import failed:\n{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = stdout(&out);
    eprintln!(
        "model import in {:.1} s:\n{said}",
        t0.elapsed().as_secs_f64()
    );
    let sha = stdout(&run(
        Command::new("sha256sum").arg(models.join("prima/primafullmodel_fixture.pt"))
    ));
    let sha = sha.split_whitespace().next().unwrap();
    assert!(said.contains(&format!("checkpoint sha256 {sha}")), "{said}");
    assert!(
        mode_and_owner(&root, "/var/lib/prima-node/model").ends_with(" prima-node:prima-node"),
        "the model is not the service user's"
    );

    run(root.as_service(&[
        "/usr/bin/prima-node",
        "infer",
        "--device",
        "cpu",
        "--slice-order",
        "filename",
        "--model",
        "/var/lib/prima-node/model",
        "--out",
        "/tmp/predictions",
        "/tmp/STUDY_A",
    ]));
    let (rel, l2) = fixtures::compare_predictions(
        &root.file("/tmp/predictions/STUDY_A_predictions.json"),
        &reference.join("expected/STUDY_A/STUDY_A_predictions.json"),
        0.1,
    );
    eprintln!("STUDY_A with the imported model: max error {rel:.2e}, clip_emb rel L2 {l2:.2e}");
    assert!(rel <= 1e-4, "scores off by {rel:e}");
    assert!(l2 <= 1e-4, "clip_emb off by {l2:e}");

    // ---- without numpy, the administrator is told what to install ----
    let out = root
        .as_service(&["/usr/bin/prima-node", "model", "import"])
        .args(["--prima", "/tmp/checkpoints/primafullmodel_fixture.pt"])
        .args(["--tokenizer", "/tmp/checkpoints/vqvae_reduced.pth"])
        .args([
            "--tokenizer-config",
            "/tmp/checkpoints/tokenizer_config.json",
        ])
        .args(["--out", "/var/lib/prima-node/again"])
        .env("PRIMA_NODE_PYTHON", "/bin/false")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("install python3-numpy"),
        "{err}"
    );
    eprintln!("wall time {:.1} s", t_all.elapsed().as_secs_f64());
}

/// The CUDA package: `PRIMA_DEB_CUDA`, else the newest `dist/prima-node-cuda_*.deb`.
fn cuda_package() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PRIMA_DEB_CUDA") {
        return Some(PathBuf::from(p));
    }
    let mut debs: Vec<_> = std::fs::read_dir(repo().join("dist"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("prima-node-cuda_") && n.ends_with(".deb")
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
}

/// `prima-node-cuda` replaces `prima-node` on a node with state (configuration edited for a
/// GPU, model, database), offline; every library the binary NEEDs resolves inside the
/// package, each shipped library loads (the driver's libcuda aside), and on this machine
/// without a GPU the node says CUDA is unavailable and runs on the CPU.
#[test]
fn the_cuda_package_replaces_the_cpu_one_keeping_state() {
    // SAFETY: geteuid has no preconditions.
    if !require(
        unsafe { libc::geteuid() } == 0,
        "not root: chroot and mounts need root",
    ) || !require(
        have("mmdebstrap"),
        "mmdebstrap not installed (scripts/setup.sh)",
    ) || !have_dcmtk()
    {
        return;
    }
    let (Some(cpu), Some(gpu)) = (package(), cuda_package()) else {
        let what = "no CPU and CUDA packages: scripts/package.sh and scripts/package.sh --cuda";
        assert!(std::env::var_os("PRIMA_DEB_CUDA").is_none(), "{what}");
        eprintln!("SKIPPED: {what}");
        return;
    };
    let t_all = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let root = Root::new();
    root.install(&cpu);
    run(root.as_service(&[
        "/usr/bin/prima-node",
        "model",
        "demo",
        "--out",
        "/var/lib/prima-node/model",
    ]));
    let port = free_port();
    let dest_port = free_port();
    let config = node_config(port, dest_port).replace("device = \"cpu\"", "device = \"cuda\"");
    assert!(config.contains("device = \"cuda\""));
    std::fs::write(root.file(CONFIG), &config).unwrap();
    let study = synth_study(&root, "study1", 1);
    let study1_uid = study_uid(&study);
    let dest = StoreScp::start(dest_port);
    let node = Served::start(&root, work.path().join("cpu.log"), port);
    send(port, &study);
    assert!(
        wait_until(Duration::from_secs(180), || outputs_for(&dest, &study1_uid)
            == (1, 1)),
        "no SR and KOS from the CPU package:\n{}",
        node.log_text()
    );
    node.stop();
    // The node's state as `status` prints it, less the free disk space (the switch adds
    // ~3 GB of libraries).
    let state = |root: &Root| {
        status(root)
            .lines()
            .filter(|l| !l.starts_with("disk:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = state(&root);
    assert!(before.contains(&study1_uid), "{before}");

    // ---- the switch ----
    let size = std::fs::metadata(&gpu).unwrap().len();
    let took = root.install(&gpu);
    eprintln!(
        "{} ({} MB) replaced prima-node in {:.1} s",
        gpu.display(),
        size / 1_000_000,
        took.as_secs_f64()
    );
    assert!(root.installed_version_of("prima-node-cuda").is_some());
    assert!(
        root.installed_version().is_none(),
        "prima-node still installed"
    );
    assert_eq!(
        std::fs::read_to_string(root.file(CONFIG)).ok().as_deref(),
        Some(config.as_str()),
        "the configuration did not pass to prima-node-cuda"
    );
    assert!(root
        .file("/var/lib/prima-node/model/manifest.json")
        .exists());
    assert_eq!(state(&root), before, "the node's state changed");

    let ldd = stdout(&run(root.chroot().args(["ldd", "/usr/bin/prima-node"])));
    assert!(!ldd.contains("not found"), "{ldd}");
    assert!(
        ldd.contains("/usr/lib/prima-node/libtorch_cuda.so")
            && ldd.contains("/usr/lib/prima-node/libcublasLt.so.13"),
        "{ldd}"
    );
    // What is opened by name at run time (cuDNN's parts, nvrtc's builtins) loads too;
    // libcaffe2_nvrtc needs only the driver besides the package.
    let load = root
        .chroot()
        .args([
            "python3",
            "-c",
            "import ctypes, glob\n\
             for f in sorted(glob.glob('/usr/lib/prima-node/*.so*')):\n\
             \x20   if 'caffe2_nvrtc' not in f: ctypes.CDLL(f)\n\
             print('loaded')",
        ])
        .output()
        .unwrap();
    assert!(
        stdout(&load).contains("loaded"),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let ldd = stdout(&run(root
        .chroot()
        .args(["ldd", "/usr/lib/prima-node/libcaffe2_nvrtc.so"])));
    let missing: Vec<_> = ldd.lines().filter(|l| l.contains("not found")).collect();
    assert_eq!(missing.len(), 1, "{ldd}");
    assert!(missing[0].contains("libcuda.so.1"), "{ldd}");

    // ---- no GPU here: said, and the studies still answered on the CPU ----
    let out = root
        .as_service(&[
            "/usr/bin/prima-node",
            "infer",
            "--device",
            "cuda",
            "--model",
            "/var/lib/prima-node/model",
            "--out",
            "/tmp/out",
            "/tmp/study1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--device cuda"),
        "{err}"
    );
    eprintln!("infer --device cuda: {}", err.trim());
    let node = Served::start(&root, work.path().join("cuda.log"), port);
    let study2 = synth_study(&root, "study2", 2);
    let study2_uid = study_uid(&study2);
    send(port, &study2);
    assert!(
        wait_until(Duration::from_secs(180), || outputs_for(&dest, &study2_uid)
            == (1, 1)),
        "no SR and KOS from the CUDA package:\n{}",
        node.log_text()
    );
    let log = node.log_text();
    let said = log
        .lines()
        .find(|l| l.contains("CUDA not available: the model runs on the CPU"));
    assert!(
        said.is_some(),
        "the node did not say CUDA is unavailable:\n{log}"
    );
    eprintln!("node: {}", said.unwrap().trim());
    node.stop();

    // ---- and back: the CPU package replaces the CUDA one the same way ----
    root.install(&cpu);
    assert!(root.installed_version_of("prima-node-cuda").is_none());
    assert!(root.installed_version().is_some());
    assert_eq!(
        std::fs::read_to_string(root.file(CONFIG)).ok().as_deref(),
        Some(config.as_str())
    );
    assert!(!root.file("/usr/lib/prima-node/libtorch_cuda.so").exists());
    eprintln!("wall time {:.1} s", t_all.elapsed().as_secs_f64());
}

#[test]
fn lintian_reports_no_errors() {
    if !require(have("lintian"), "lintian not installed (scripts/setup.sh)") {
        return;
    }
    let Some(deb) = package() else {
        no_package();
        return;
    };
    // The CUDA package too, when one was built (scripts/package.sh --cuda).
    for deb in std::iter::once(deb).chain(cuda_package()) {
        let out = Command::new("lintian")
            .args(["--fail-on", "error", "--no-tag-display-limit"])
            .arg(&deb)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lintian {}:\n{}{}",
            deb.display(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
