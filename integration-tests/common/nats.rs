//! A NATS JetStream cluster on loopback for the cluster tests: three `nats-server`s with
//! JetStream, routed to each other, each with its own store, started and killed by the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// The recommended nats-server: `$PRIMA_NATS_SERVER` (scripts/env.sh names the release
/// setup installs), else the one on PATH.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("PRIMA_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// Debian 12's nats-server 2.9.10, with the compare-and-set bug (nats-server#4320).
pub const DEBIAN_NATS_SERVER: &str = "/usr/sbin/nats-server";

pub fn have_nats_server() -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true")
        && std::env::var_os("PRIMA_NATS_SERVER").is_none()
    {
        panic!("PRIMA_NATS_SERVER not set (scripts/setup.sh installs the pinned nats-server, scripts/env.sh names it)");
    }
    let ok = Command::new(nats_server_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("nats-server not installed (scripts/setup.sh installs it)");
        }
        eprintln!("SKIPPED: nats-server not installed");
    }
    ok
}

pub struct NatsServer {
    pub client_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    pub dir: tempfile::TempDir,
    pub binary: PathBuf,
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Three servers of the recommended release, JetStream on, one cluster.
    pub fn start() -> NatsCluster {
        NatsCluster::start_bin(&nats_server_bin())
    }

    /// Three servers run from `binary`.
    pub fn start_bin(binary: &std::path::Path) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut servers = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let store = dir.path().join(format!("n{i}"));
            let conf = format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 2GB }}\n\
                 cluster {{ name: prima, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            );
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config, conf).unwrap();
            servers.push(NatsServer {
                client_port: *client,
                config,
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            });
        }
        let mut c = NatsCluster {
            dir,
            binary: binary.to_path_buf(),
            servers,
        };
        for i in 0..3 {
            c.start_server(i);
        }
        // JetStream answers once the servers elected a metadata leader.
        let ok = wait_until(Duration::from_secs(30), || {
            c.servers.iter().any(|s| {
                std::fs::read_to_string(&s.log)
                    .unwrap_or_default()
                    .contains("JetStream cluster new metadata leader")
                    || std::fs::read_to_string(&s.log)
                        .unwrap_or_default()
                        .contains("Self is new JetStream cluster metadata leader")
            })
        });
        assert!(ok, "no JetStream metadata leader:\n{}", c.logs());
        c
    }

    pub fn start_server(&mut self, i: usize) {
        let binary = self.binary.clone();
        let s = &mut self.servers[i];
        assert!(s.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&s.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        s.child = Some(child);
        let port = s.client_port;
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nats-server {i} does not listen"
        );
    }

    pub fn sigkill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `servers = [...]` value for `[cluster]`.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("\"nats://127.0.0.1:{}\"", s.client_port))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.sigkill(i);
        }
    }
}
