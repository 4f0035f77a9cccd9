//! A harness for end-to-end tests: real `poncho-server` processes on
//! loopback, each with its own data directory and log file, that tests can
//! kill (-9), stop, restart and talk to with a small JSON Lines client.
//!
//! Every process started is killed when the `Cluster` is dropped. If the test
//! is failing (panicking), each node's log is printed first, for diagnosis.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_client::{in_session, ClusterClient, Route};
use poncho_protocol::{decode_request, ClientRequest, GetRequest, Request};
use serde_json::{json, Value};

pub mod faults;
pub mod linearizability;
pub mod proxy;
pub mod pty;

/// A binary of this workspace, built by `cargo test` next to the test binary
/// (target/<profile>/deps/<test> -> target/<profile>/<name>).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Ports the OS says are free now. A port could be taken again before the
/// node binds it; the tests' loopback is quiet enough that this is rare.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// What a `poncho-server` process is started with.
pub struct ServerSpec<'a> {
    pub id: u64,
    pub addr: SocketAddr,
    /// `ID=IP:PORT` for every member, as this node should reach it.
    pub peers: &'a [String],
    pub data_dir: &'a Path,
    pub args: &'a [String],
}

/// Waits up to 10 s until node `id`, started as `child`, accepts
/// connections on `addr`; fails the test, with its log, if it exits first.
pub fn wait_listening(id: u64, addr: SocketAddr, child: &mut Option<Child>, log_path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        let running = child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        assert!(
            running,
            "node {id} exited during startup:\n{}",
            std::fs::read_to_string(log_path).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "node {id} did not listen on {addr}"
        );
        sleep(Duration::from_millis(10));
    }
}

/// Starts a `poncho-server`, its stdout and stderr appended to `log_path`.
pub fn spawn_server(spec: &ServerSpec<'_>, log_path: &Path, bootstrap_hint: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("node log file");
    let mut cmd = Command::new(workspace_bin("poncho-server"));
    cmd.args(["--id", &spec.id.to_string()])
        .args(["--host", &spec.addr.ip().to_string()])
        .args(["--port", &spec.addr.port().to_string()])
        .args(["--peers", &spec.peers.join(",")])
        .arg("--data-dir")
        .arg(spec.data_dir)
        .args(spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    if bootstrap_hint {
        cmd.arg("is_leader");
    }
    cmd.spawn().expect("spawn poncho-server")
}

pub struct NodeProc {
    pub id: u64,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    extra_args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes; node 1 gets the `is_leader` hint.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::launch_all(n, extra_args, false)
    }

    /// Node N listens on 127.0.0.N (and connects to peers from it).
    pub fn start_on_distinct_ips(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::launch_all(n, extra_args, true)
    }

    fn launch_all(n: usize, extra_args: &[&str], distinct_ips: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(n);
        let nodes = (1..=n as u64)
            .map(|id| NodeProc {
                id,
                addr: SocketAddr::from((
                    [127, 0, 0, if distinct_ips { id as u8 } else { 1 }],
                    ports[(id - 1) as usize],
                )),
                data_dir: dir.path().join(format!("node-{id}")),
                log_path: dir.path().join(format!("node-{id}.log")),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        for id in 1..=n as u64 {
            cluster.launch(id);
        }
        for id in 1..=n as u64 {
            cluster.wait_listening(id);
        }
        cluster
    }

    fn node(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[(id - 1) as usize].addr
    }

    fn launch(&mut self, id: u64) {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect();
        let extra = self.extra_args.clone();
        let node = self.node(id);
        let spec = ServerSpec {
            id,
            addr: node.addr,
            peers: &peers,
            data_dir: &node.data_dir,
            args: &extra,
        };
        node.child = Some(spawn_server(&spec, &node.log_path, id == 1));
    }

    /// Waits until the node accepts connections.
    pub fn wait_listening(&mut self, id: u64) {
        let node = self.node(id);
        wait_listening(id, node.addr, &mut node.child, &node.log_path);
    }

    /// `kill -9`: no chance to flush or sync anything.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        let mut child = self.node(id).child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.launch(id);
        self.wait_listening(id);
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        self.node(id).is_running()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[(id - 1) as usize].log_path).unwrap_or_default()
    }

    /// STATUS of a node, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        let mut c = Client::connect(self.addr(id)).ok()?;
        let reply = c.request(&json!({"msg_type": "STATUS"})).ok()?;
        (reply["msg_type"] == "STATUS").then(|| reply["payload"].clone())
    }

    /// The leader that a majority of running nodes agree on, within `timeout`.
    pub fn wait_for_leader(&mut self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
            for &id in &ids {
                if let Some(s) = self.status(id) {
                    if s["role"] == "leader" {
                        return id;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}\n{}",
                self.all_logs()
            );
            sleep(Duration::from_millis(50));
        }
    }

    pub fn client(&self, id: u64) -> Client {
        Client::connect(self.addr(id)).expect("connect to node")
    }

    pub fn all_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, self.log(n.id)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A blocking JSON Lines client with a read timeout.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Like [`connect`](Self::connect), with `timeout` for the connect and
    /// for each reply.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn read_reply(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn request(&mut self, request: &Value) -> std::io::Result<Value> {
        let mut line = serde_json::to_vec(request).expect("json");
        line.push(b'\n');
        self.send_raw(&line)?;
        self.read_reply()
    }

    pub fn set(&mut self, key: &str, value: &str) -> std::io::Result<Value> {
        self.request(&json!({"msg_type": "SET", "payload": {"key": key, "value": value}}))
    }

    pub fn get(&mut self, key: &str) -> std::io::Result<Value> {
        self.request(&json!({"msg_type": "GET", "payload": {"key": key}}))
    }
}

/// Sends a write to the cluster like a careful client (poncho-client's
/// [`ClusterClient::write`], node 1 first): opens a session (REGISTER_CLIENT),
/// sends the write in it, follows NOT_LEADER, retries NO_LEADER, timeouts and
/// dropped connections with the same client_id/seq until `timeout`. Returns
/// the success reply's payload. If the session is gone (SESSION_EXPIRED)
/// before any attempt could have been applied, the write is sent again in a
/// new session; after an attempt whose outcome is unknown, the test fails:
/// the write may or may not have been applied.
pub fn write_with_retry(cluster: &Cluster, request: &Value, timeout: Duration) -> Value {
    let write = client_request(request);
    match cluster_client(cluster, timeout).write(|fields| in_session(&write, fields)) {
        Ok(reply) => reply.envelope.payload,
        Err(e) => panic!("write {request}: {e}"),
    }
}

/// A linearizable GET of `key` at whichever node leads, following redirects
/// and retrying like [`write_with_retry`] until `timeout`: the reply's
/// payload.
pub fn read_with_retry(cluster: &Cluster, key: &str, timeout: Duration) -> Value {
    let get = ClientRequest::Get(GetRequest {
        key: key.to_string(),
        stale: false,
    });
    match cluster_client(cluster, timeout).request(&get, Route::Leader) {
        Ok(reply) => reply.envelope.payload,
        Err(e) => panic!("GET {key} not served in time: {e}"),
    }
}

/// A client of every node of `cluster`, node 1 first.
fn cluster_client(cluster: &Cluster, timeout: Duration) -> ClusterClient {
    let addrs = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    ClusterClient::new(addrs, timeout, false)
}

/// A request written as JSON, decoded as the server would.
fn client_request(request: &Value) -> ClientRequest {
    let line = serde_json::to_vec(request).expect("json");
    match decode_request(&line) {
        Ok(Request::Client { request, .. }) => request,
        other => panic!("{request} is not a client request: {other:?}"),
    }
}
