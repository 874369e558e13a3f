//! A NATS JetStream cluster on loopback for the cluster tests: three `nats-server`s with
//! JetStream, routed to each other, each with its own store, started and killed by the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::faults::{Direction, FaultProxy};
use super::wait_until;

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
    pub route_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    pub dir: tempfile::TempDir,
    pub binary: PathBuf,
    pub servers: Vec<NatsServer>,
    /// Partitionable clusters only: one proxy per ordered pair of servers.
    pub route_proxies: Vec<RouteProxy>,
    /// Partitionable clusters only: each node's proxies, one per server (by index).
    pub client_proxies: std::collections::BTreeMap<String, Vec<FaultProxy>>,
}

/// The proxy server `from` connects through to server `to`'s route port.
pub struct RouteProxy {
    pub from: usize,
    pub to: usize,
    pub proxy: FaultProxy,
}

impl NatsCluster {
    /// Three servers of the recommended release, JetStream on, one cluster.
    pub fn start() -> NatsCluster {
        NatsCluster::start_bin(&nats_server_bin())
    }

    /// Three servers run from `binary`.
    pub fn start_bin(binary: &std::path::Path) -> NatsCluster {
        NatsCluster::start_with(binary, false)
    }

    /// Three servers run from `binary` whose every route connection goes through a
    /// [`FaultProxy`] of its own per ordered pair (server i names proxy (i, j) in its
    /// `routes`), and which do not tell clients their direct addresses (`no_advertise`), so
    /// that nodes given [`NatsCluster::client_urls`] reach them only through proxies too.
    /// The partition tests cut and heal servers and nodes with it.
    pub fn start_partitionable(binary: &std::path::Path) -> NatsCluster {
        let c = NatsCluster::start_with(binary, true);
        c.assert_routes_proxied();
        c
    }

    fn start_with(binary: &std::path::Path, proxied: bool) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        // The servers' ports stay bound here until each server starts: a proxy (or another
        // test) asking the kernel for a free port meanwhile could otherwise be handed one
        // of them, and the server would fail to listen.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reserved: Vec<Option<(std::net::TcpListener, std::net::TcpListener)>> =
            (0..3).map(|_| Some((bind(), bind()))).collect();
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        let ports: Vec<(u16, u16)> = reserved
            .iter()
            .flatten()
            .map(|(c, r)| (port(c), port(r)))
            .collect();
        let mut route_proxies = Vec::new();
        if proxied {
            for i in 0..3 {
                for (j, (_, r)) in ports.iter().enumerate() {
                    if i != j {
                        route_proxies.push(RouteProxy {
                            from: i,
                            to: j,
                            proxy: FaultProxy::start(*r),
                        });
                    }
                }
            }
        }
        let mut servers = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let routes: Vec<String> = if proxied {
                route_proxies
                    .iter()
                    .filter(|p| p.from == i)
                    .map(|p| format!("\"nats-route://127.0.0.1:{}\"", p.proxy.port()))
                    .collect()
            } else {
                ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, r))| format!("\"nats-route://127.0.0.1:{r}\""))
                    .collect()
            };
            let store = dir.path().join(format!("n{i}"));
            // no_advertise: clients learn no server addresses from the cluster (they would
            // bypass the proxies). advertise: what a server gossips to the others as its
            // route address; a server that hears of a peer before its own route through the
            // proxy is up connects there directly (an implicit route), so it names a port
            // nothing listens on: such a try fails and the proxied route is used.
            let conf = format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 2GB }}\n\
                 cluster {{ name: prima, listen: \"127.0.0.1:{route}\", routes: [{}]{} }}\n",
                store.display(),
                routes.join(", "),
                if proxied {
                    ", no_advertise: true, advertise: \"127.0.0.1:1\""
                } else {
                    ""
                }
            );
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config, conf).unwrap();
            servers.push(NatsServer {
                client_port: *client,
                route_port: *route,
                config,
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            });
        }
        let mut c = NatsCluster {
            dir,
            binary: binary.to_path_buf(),
            servers,
            route_proxies,
            client_proxies: Default::default(),
        };
        for (i, r) in reserved.iter_mut().enumerate() {
            drop(r.take());
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

    /// A node's `servers = [...]` value: its own proxy to each server, made on first use
    /// and kept for the node's name (a restarted node gets the same ones).
    pub fn client_urls(&mut self, node: &str) -> String {
        let ports: Vec<u16> = self.servers.iter().map(|s| s.client_port).collect();
        self.client_proxies
            .entry(node.to_string())
            .or_insert_with(|| ports.iter().map(|p| FaultProxy::start(*p)).collect())
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{}\"", p.port()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The proxies that carry server k's traffic: its routes both ways, and every node's
    /// connection to it. Each with the direction that goes *into* server k.
    fn server_links(&self, k: usize) -> Vec<(&FaultProxy, Direction)> {
        let mut v = Vec::new();
        for r in &self.route_proxies {
            if r.to == k {
                v.push((&r.proxy, Direction::ToTarget));
            } else if r.from == k {
                v.push((&r.proxy, Direction::FromTarget));
            }
        }
        for ps in self.client_proxies.values() {
            v.push((&ps[k], Direction::ToTarget));
        }
        v
    }

    fn node_links(&self, node: &str) -> &[FaultProxy] {
        self.client_proxies
            .get(node)
            .unwrap_or_else(|| panic!("no client proxies for {node}: use client_urls"))
    }

    /// Server k silent to everyone (other servers and every node), its process alive.
    pub fn cut_server(&self, k: usize) {
        for (p, _) in self.server_links(k) {
            p.hold();
        }
    }

    /// Server k cut off by a link that answers with resets: its routes reset and refused
    /// (the other servers see it gone at once and elect leaders among themselves within
    /// seconds, rather than after NATS pings time out), every node's connection to it held
    /// (a node on it stays connected and hears nothing). `heal_server` or
    /// `heal_server_throttled` ends it.
    pub fn isolate_server(&self, k: usize) {
        for r in &self.route_proxies {
            if r.to == k || r.from == k {
                r.proxy.refuse();
            }
        }
        for ps in self.client_proxies.values() {
            ps[k].hold();
        }
    }

    pub fn heal_server(&self, k: usize) {
        for (p, _) in self.server_links(k) {
            p.pass();
        }
    }

    /// Server k heard again, each of its route proxies narrowed to `bytes_per_s` each way
    /// (the nodes' connections pass freely): a server rejoining over a slow link, whose
    /// replicas take a while to catch up on what it missed.
    pub fn heal_server_throttled(&self, k: usize, bytes_per_s: u64) {
        for r in &self.route_proxies {
            if r.to == k || r.from == k {
                r.proxy.pass_at(bytes_per_s);
            }
        }
        for ps in self.client_proxies.values() {
            ps[k].pass();
        }
    }

    /// Traffic into server k lost (`inbound`), or out of it, the other way passing.
    pub fn hold_server_one_way(&self, k: usize, inbound: bool) {
        for (p, into_k) in self.server_links(k) {
            let other = match into_k {
                Direction::ToTarget => Direction::FromTarget,
                Direction::FromTarget => Direction::ToTarget,
            };
            p.hold_one_way(if inbound { into_k } else { other });
        }
    }

    /// Every packet to and from server k delayed by `d`.
    pub fn latency_server(&self, k: usize, d: Duration) {
        for (p, _) in self.server_links(k) {
            p.latency(d);
        }
    }

    /// The node loses NATS (every server silent to it); it keeps running.
    pub fn cut_node(&self, node: &str) {
        for p in self.node_links(node) {
            p.hold();
        }
    }

    pub fn heal_node(&self, node: &str) {
        for p in self.node_links(node) {
            p.pass();
        }
    }

    /// The node's traffic one way (`ToTarget`: what it sends) lost.
    pub fn hold_node_one_way(&self, node: &str, d: Direction) {
        for p in self.node_links(node) {
            p.hold_one_way(d);
        }
    }

    pub fn latency_node(&self, node: &str, d: Duration) {
        for p in self.node_links(node) {
            p.latency(d);
        }
    }

    /// Every link (routes and nodes) back to normal forwarding.
    pub fn heal_all(&self) {
        for r in &self.route_proxies {
            r.proxy.pass();
        }
        for ps in self.client_proxies.values() {
            for p in ps {
                p.pass();
            }
        }
    }

    /// The server the node is connected to now (its proxy with an open connection).
    pub fn server_of(&self, node: &str) -> Option<usize> {
        self.node_links(node).iter().position(|p| p.active() > 0)
    }

    /// Every pair of servers is routed, and only through the proxies: each pair's proxies
    /// carried connections, and no server log names another's route port (where it would
    /// have connected directly, e.g. to a gossiped address).
    pub fn assert_routes_proxied(&self) {
        let routed = wait_until(Duration::from_secs(20), || {
            (0..3).all(|i| {
                (0..3).filter(|j| *j != i).all(|j| {
                    self.route_proxies
                        .iter()
                        .filter(|r| (r.from, r.to) == (i, j) || (r.from, r.to) == (j, i))
                        .any(|r| r.proxy.active() > 0)
                })
            })
        });
        assert!(
            routed,
            "routes not formed through the proxies:\n{}",
            self.logs()
        );
        let logs = self.logs();
        for s in &self.servers {
            let direct = format!("127.0.0.1:{} - rid:", s.route_port);
            assert!(
                !logs.contains(&direct),
                "a route bypasses the proxies ({direct}):\n{logs}"
            );
        }
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
