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
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_client::{in_session, ClusterClient, Credentials, Route};
use poncho_protocol::{decode_request, ClientRequest, GetRequest, Request};
use poncho_tls::rustls::{ClientConfig, ClientConnection};
use poncho_tls::MaybeTls;
use serde_json::{json, Value};

use auth::{Login, StatusPoller};

pub mod auth;
pub mod certs;
pub mod faults;
pub mod linearizability;
pub mod proxy;
pub mod pty;
pub mod txn_check;
pub mod watchers;

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

/// The cluster secret file of the test cluster whose nodes keep their data
/// under `dir`: written once (owner-only), then shared by every node there.
pub fn cluster_secret_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("cluster-secret");
    if !path.exists() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let secret = format!("test-secret-{:08x}-{nanos:032x}\n", std::process::id());
        std::fs::write(&path, secret).expect("write the cluster secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the cluster secret");
    }
    path
}

/// Starts a `poncho-server`, its stdout and stderr appended to `log_path`.
/// A node with peers gets its cluster's secret file (see
/// [`cluster_secret_file`]) unless its flags settle peer authentication.
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
        .args(if spec.peers.is_empty() {
            Vec::new()
        } else {
            vec!["--peers".to_string(), spec.peers.join(",")]
        })
        .arg("--data-dir")
        .arg(spec.data_dir)
        .args(spec.args)
        .args(peer_auth_args(spec))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    if bootstrap_hint {
        cmd.arg("is_leader");
    }
    cmd.spawn().expect("spawn poncho-server")
}

fn peer_auth_args(spec: &ServerSpec<'_>) -> Vec<String> {
    let settled = spec.args.iter().any(|a| {
        a == "--insecure"
            || a == "--peer-client-cert-auth"
            || a.starts_with("--cluster-secret-file")
    });
    let joins = spec.args.iter().any(|a| a == "--join");
    match spec.data_dir.parent() {
        Some(dir) if (spec.peers.len() > 1 || joins) && !settled => vec![
            "--cluster-secret-file".to_string(),
            cluster_secret_file(dir).display().to_string(),
        ],
        _ => Vec::new(),
    }
}

/// One `poncho-server` process of a test cluster, and what it is started
/// with: the one launcher [`Cluster`] and [`faults::FaultCluster`] share
/// (spawn with its flags, track the PID, kill -9, restart with the same
/// flags, SIGSTOP/SIGCONT, STATUS). The process is killed when this drops.
pub struct NodeProc {
    pub id: u64,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--peers`: `ID=IP:PORT` for every member, as this node reaches it.
    peers: Vec<String>,
    /// Further flags, the same at every launch.
    args: Vec<String>,
    child: Option<Child>,
    /// Stopped by SIGSTOP, not yet resumed.
    paused: bool,
}

impl NodeProc {
    /// A node not yet started, its data directory and log in `dir`.
    pub fn new(id: u64, addr: SocketAddr, dir: &Path, peers: Vec<String>, args: &[String]) -> Self {
        NodeProc {
            id,
            addr,
            data_dir: dir.join(format!("node-{id}")),
            log_path: dir.join(format!("node-{id}.log")),
            peers,
            args: args.to_vec(),
            child: None,
            paused: false,
        }
    }

    /// Moves the node to `addr` from its next launch on (its own `--peers`
    /// entry too, which must name where it listens).
    pub fn move_to(&mut self, addr: SocketAddr) {
        let own = format!("{}=", self.id);
        for p in self.peers.iter_mut().filter(|p| p.starts_with(&own)) {
            *p = format!("{own}{addr}");
        }
        self.addr = addr;
    }

    /// Replaces the further flags the node is started with from now on.
    pub fn set_args(&mut self, args: &[String]) {
        self.args = args.to_vec();
    }

    /// Spawns the process (whatever ran before is forgotten: kill it first).
    pub fn launch(&mut self, bootstrap_hint: bool) {
        let spec = ServerSpec {
            id: self.id,
            addr: self.addr,
            peers: &self.peers,
            data_dir: &self.data_dir,
            args: &self.args,
        };
        self.child = Some(spawn_server(&spec, &self.log_path, bootstrap_hint));
        self.paused = false;
    }

    /// Waits until the node accepts connections.
    pub fn wait_listening(&mut self) {
        wait_listening(self.id, self.addr, &mut self.child, &self.log_path);
    }

    /// `kill -9`: no chance to flush or sync anything. True if it ran.
    pub fn kill(&mut self) -> bool {
        self.paused = false;
        match self.child.take() {
            Some(mut child) => {
                let _ = child.kill(); // SIGKILL ends a stopped process too
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
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

    /// Kills the process if it runs, starts it again with the same flags
    /// (the data directory is kept) and waits until it listens.
    pub fn restart(&mut self, bootstrap_hint: bool) {
        self.kill();
        self.launch(bootstrap_hint);
        self.wait_listening();
    }

    /// Sends `signal` to the process; false if there is none.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        match self.child.as_ref() {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            Some(c) => unsafe { libc::kill(c.id() as libc::pid_t, signal) == 0 },
            None => false,
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing until
    /// [`resume`](Self::resume). True if it was sent.
    pub fn pause(&mut self) -> bool {
        let sent = self.signal(libc::SIGSTOP);
        self.paused |= sent;
        sent
    }

    /// SIGCONT, if paused.
    pub fn resume(&mut self) {
        if self.paused && self.signal(libc::SIGCONT) {
            self.paused = false;
        }
    }

    /// Started (not killed) and not paused: worth asking for STATUS.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status, if the process was started and has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// STATUS, if the node answers over `client`.
    pub fn status_over(client: std::io::Result<Client>) -> Option<Value> {
        auth::status_on(&mut client.ok()?)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Among `(id, STATUS payload)` pairs, the node claiming leadership in the
/// highest term, and that term: a deposed leader cut off by a partition may
/// still claim an older one.
pub fn leader_of(statuses: impl IntoIterator<Item = (u64, Value)>) -> Option<(u64, u64)> {
    statuses
        .into_iter()
        .filter(|(_, s)| s["role"] == "leader")
        .filter_map(|(id, s)| Some((id, s["term"].as_u64()?)))
        .max_by_key(|&(_, term)| term)
}

/// Polls `leader` every 20 ms until it names one and returns its id; panics
/// after `timeout`, with `context()` in the message.
pub fn wait_for_leader(
    timeout: Duration,
    mut leader: impl FnMut() -> Option<(u64, u64)>,
    context: impl Fn() -> String,
) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((id, _)) = leader() {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no leader within {timeout:?}\n{}",
            context()
        );
        sleep(Duration::from_millis(20));
    }
}

/// Launches every node (node 1 with the `is_leader` hint), then waits until
/// each listens.
pub fn launch_all(nodes: &mut [NodeProc]) {
    for node in nodes.iter_mut() {
        node.launch(node.id == 1);
    }
    for node in nodes.iter_mut() {
        node.wait_listening();
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    _dir: tempfile::TempDir,
    /// What the harness's own connections speak: TLS with this, or plain.
    tls: Option<Arc<ClientConfig>>,
    /// How the harness asks for STATUS (as which user, once auth is on);
    /// its login is also [`cluster_client`]'s.
    poller: StatusPoller,
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

    /// Each node with a peer port of its own (`--peer-addr`, listed in
    /// `--peers` as `ID=CLIENT/PEER`) besides `extra_args`.
    pub fn start_with_peer_ports(n: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * n);
        let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
        let peers: Vec<String> = (0..n)
            .map(|i| format!("{}={}/{}", i + 1, addr(i), addr(n + i)))
            .collect();
        let nodes: Vec<NodeProc> = (0..n)
            .map(|i| {
                let mut args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
                args.extend(["--peer-addr".to_string(), addr(n + i).to_string()]);
                NodeProc::new(i as u64 + 1, addr(i), dir.path(), peers.clone(), &args)
            })
            .collect();
        Cluster::launched(nodes, dir)
    }

    /// Starts `nodes` (their data under `dir`) and waits until they listen.
    fn launched(mut nodes: Vec<NodeProc>, dir: tempfile::TempDir) -> Cluster {
        launch_all(&mut nodes);
        Cluster {
            nodes,
            _dir: dir,
            tls: None,
            poller: StatusPoller::default(),
        }
    }

    fn launch_all(n: usize, extra_args: &[&str], distinct_ips: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(n);
        let addrs: Vec<SocketAddr> = (1..=n as u64)
            .map(|id| {
                let ip = [127, 0, 0, if distinct_ips { id as u8 } else { 1 }];
                SocketAddr::from((ip, ports[(id - 1) as usize]))
            })
            .collect();
        let peers: Vec<String> = (1..)
            .zip(&addrs)
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        let args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let nodes: Vec<NodeProc> = (1..)
            .zip(&addrs)
            .map(|(id, &addr)| NodeProc::new(id, addr, dir.path(), peers.clone(), &args))
            .collect();
        Cluster::launched(nodes, dir)
    }

    fn node(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// A free port on node `id`'s IP.
    pub fn free_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from((self.addr(id).ip(), free_ports(1)[0]))
    }

    /// Starts a new node, id one past the last, on a free port, with node
    /// 1's further flags and `--join` (naming node 1) instead of `--peers`:
    /// it waits to be added (`MEMBER add`). Returns its id.
    pub fn start_joining(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let port = free_ports(1)[0];
        let addr = SocketAddr::from((self.addr(1).ip(), port));
        let mut args: Vec<String> = self.nodes[0]
            .args
            .iter()
            .filter(|a| !a.starts_with("--force-new-cluster"))
            .cloned()
            .collect();
        args.extend(["--join".to_string(), self.addr(1).to_string()]);
        let mut node = NodeProc::new(id, addr, self._dir.path(), Vec::new(), &args);
        node.launch(false);
        node.wait_listening();
        self.nodes.push(node);
        id
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[(id - 1) as usize].addr
    }

    /// Waits until the node accepts connections.
    pub fn wait_listening(&mut self, id: u64) {
        self.node(id).wait_listening();
    }

    /// `kill -9`: no chance to flush or sync anything.
    pub fn kill(&mut self, id: u64) {
        self.node(id).kill();
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        self.node(id).stop()
    }

    pub fn restart(&mut self, id: u64) {
        self.node(id).restart(id == 1);
    }

    /// Kills node `id` if it runs and starts it again with `extra_args` in
    /// place of the flags it had (peer authentication included: without a
    /// `--cluster-secret-file` or `--insecure` there, it gets the cluster's
    /// secret).
    pub fn restart_with(&mut self, id: u64, extra_args: &[&str]) {
        let args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let node = self.node(id);
        node.kill();
        node.set_args(&args);
        node.launch(false);
        node.wait_listening();
    }

    /// Node `id`'s `--peer-addr`, if it has one.
    pub fn peer_addr(&self, id: u64) -> Option<SocketAddr> {
        let args = &self.nodes[(id - 1) as usize].args;
        let i = args.iter().position(|a| a == "--peer-addr")?;
        args.get(i + 1)?.parse().ok()
    }

    /// Where node `id` keeps its data.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.nodes[(id - 1) as usize].data_dir.clone()
    }

    /// The directory that holds every node's data directory and log.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        self.node(id).is_running()
    }

    pub fn log(&self, id: u64) -> String {
        self.nodes[(id - 1) as usize].log()
    }

    /// STATUS of a node, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        self.poller.status(self.addr(id), || self.try_client(id))
    }

    /// From now on the harness logs in as `login` (STATUS,
    /// [`write_with_retry`], [`read_with_retry`]): for a cluster with auth
    /// enabled.
    pub fn log_in_as(&mut self, login: Login) {
        self.poller.log_in_as(login);
    }

    /// A connection to node `id` logged in as `login`.
    pub fn client_as(&self, id: u64, login: &Login) -> Client {
        let mut client = self.client(id);
        let ok = auth::log_in(&mut client, login).expect("AUTHENTICATE");
        assert!(ok, "node {id} refused {}'s password", login.user);
        client
    }

    /// From now on the harness's connections to the nodes (STATUS, clients)
    /// speak TLS with `tls`: for a cluster started with `--cert-file`.
    pub fn use_tls(&mut self, tls: Arc<ClientConfig>) {
        self.tls = Some(tls);
    }

    fn try_client(&self, id: u64) -> std::io::Result<Client> {
        match &self.tls {
            None => Client::connect(self.addr(id)),
            Some(tls) => Client::connect_tls(self.addr(id), tls.clone()),
        }
    }

    /// The node claiming leadership in the highest term, and that term.
    pub fn leader(&self) -> Option<(u64, u64)> {
        leader_of(
            self.nodes
                .iter()
                .filter_map(|n| Some((n.id, self.status(n.id)?))),
        )
    }

    /// The leader (see [`Cluster::leader`]) once there is one, within
    /// `timeout`; the nodes' logs are in the panic if there is none.
    pub fn wait_for_leader(&mut self, timeout: Duration) -> u64 {
        wait_for_leader(timeout, || self.leader(), || self.all_logs())
    }

    pub fn client(&self, id: u64) -> Client {
        self.try_client(id).expect("connect to node")
    }

    pub fn all_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
        // Each NodeProc kills its process as it drops, before the directory.
    }
}

/// A blocking JSON Lines client with a read timeout, over plain TCP or TLS.
pub struct Client {
    stream: BufReader<MaybeTls<TcpStream>>,
    /// Where each reply line read is also kept, if set.
    transcript: Option<Transcript>,
}

/// Reply lines that clients read, kept for a test to search afterwards.
pub type Transcript = Arc<std::sync::Mutex<Vec<String>>>;

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        Client::connect_with(addr, Duration::from_secs(2), Duration::from_secs(10), None)
    }

    /// Like [`connect`](Self::connect), with `timeout` for the connect and
    /// for each reply.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        Client::connect_with(addr, timeout, timeout, None)
    }

    /// Like [`connect_tls`](Self::connect_tls), with `timeout` for the
    /// connect and for each reply.
    pub fn connect_tls_timeout(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        Client::connect_with(addr, timeout, timeout, Some(tls))
    }

    /// A connection speaking TLS with `tls` (server name: `addr`'s IP).
    pub fn connect_tls(addr: SocketAddr, tls: Arc<ClientConfig>) -> std::io::Result<Client> {
        Client::connect_with(
            addr,
            Duration::from_secs(2),
            Duration::from_secs(10),
            Some(tls),
        )
    }

    fn connect_with(
        addr: SocketAddr,
        connect: Duration,
        reply: Duration,
        tls: Option<Arc<ClientConfig>>,
    ) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, connect)?;
        stream.set_read_timeout(Some(reply))?;
        stream.set_write_timeout(Some(reply))?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            None => MaybeTls::Plain(stream),
            Some(config) => {
                let name = poncho_tls::ServerName::IpAddress(addr.ip().into());
                let session = ClientConnection::new(config, name)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                MaybeTls::tls(session, stream)
            }
        };
        Ok(Client {
            stream: BufReader::new(stream),
            transcript: None,
        })
    }

    /// From now on every reply line this client reads is also pushed onto
    /// `transcript`.
    pub fn record_into(&mut self, transcript: Transcript) {
        self.transcript = Some(transcript);
    }

    /// How long a read waits for a reply from now on.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        let _ = self
            .stream
            .get_ref()
            .get_ref()
            .set_read_timeout(Some(timeout));
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    pub fn read_reply(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(transcript) = &self.transcript {
            let mut lines = transcript.lock().unwrap_or_else(|e| e.into_inner());
            lines.push(line.clone());
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
    let credentials = cluster
        .poller
        .login()
        .map(|l| Credentials::new(&l.user, &l.password));
    ClusterClient::new(addrs, timeout, false)
        .with_tls(cluster.tls.clone().map(poncho_client::Tls::from_config))
        .with_credentials(credentials)
}

/// A request written as JSON, decoded as the server would.
fn client_request(request: &Value) -> ClientRequest {
    let line = serde_json::to_vec(request).expect("json");
    match decode_request(&line) {
        Ok(Request::Client { request, .. }) => request,
        other => panic!("{request} is not a client request: {other:?}"),
    }
}
