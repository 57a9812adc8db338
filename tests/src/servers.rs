//! Real servers for the integration tests, started on loopback ports under a scratch directory
//! and stopped when dropped: ClickHouse (the Debian package, 18.16) and tansu (a Kafka-protocol
//! broker) on sqlite storage, which keeps offsets exact across restarts.
//!
//! The binaries are installed by `deploy/install-test-servers.sh` (run by `deploy/test.sh`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback port free for a server a test starts (ClickHouse, a broker, a cluster's process).
///
/// Taken below the kernel's ephemeral range, not from it: a port that the kernel handed out
/// for a probe and that was then released can be handed out again, before the server binds it,
/// as the local port of any outgoing connection (the Kafka and ClickHouse clients of the tests
/// running beside); the server then fails to start. Below that range only this function hands
/// ports out: each test process starts at its own place (spread by process id), goes on from
/// there, and skips any port it cannot bind now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (base, span) = (10_000u32, ephemeral_low.saturating_sub(10_000));
    if span >= 1000 {
        let start = std::process::id().wrapping_mul(7919);
        for _ in 0..span {
            let port = base + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Writes `dir/hosts`, the hostfile of a cluster of `processes` processes on free loopback ports.
pub fn write_hostfile(dir: &Path, processes: usize) {
    let hosts: String = (0..processes)
        .map(|_| format!("127.0.0.1:{}\n", free_port()))
        .collect();
    std::fs::write(dir.join("hosts"), hosts).expect("hostfile");
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find_binary(name: &str, also: &[&str]) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = also.iter().map(PathBuf::from).collect();
    candidates.push(Path::new(&home).join(".cargo/bin").join(name));
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        candidates.push(Path::new(dir).join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("`{name}` is not installed; run deploy/install-test-servers.sh"))
}

/// A ClickHouse server of its own.
pub struct ClickHouseServer {
    child: Option<Child>,
    dir: PathBuf,
    pub http_port: u16,
    config: PathBuf,
}

impl ClickHouseServer {
    /// A server another process started and still runs (`dir`: its scratch directory), on
    /// `http_port`; dropping this leaves it running.
    pub fn attach(dir: &Path, http_port: u16) -> ClickHouseServer {
        ClickHouseServer {
            child: None,
            dir: dir.to_path_buf(),
            http_port,
            config: dir.join("clickhouse/config.xml"),
        }
    }

    pub fn start(dir: &Path) -> ClickHouseServer {
        ClickHouseServer::start_with(dir, "", "")
    }

    /// A server that also listens for HTTPS on the returned port, with a self-signed
    /// certificate for `localhost` and 127.0.0.1 (`<dir>/clickhouse/cert.pem`, to trust through
    /// `SSL_CERT_FILE`), and has a user `user` with `password` (the default user stays open, for
    /// the tests' own queries).
    pub fn start_secured(dir: &Path, user: &str, password: &str) -> (ClickHouseServer, u16) {
        let tls = dir.join("clickhouse");
        std::fs::create_dir_all(&tls).expect("clickhouse dir");
        let (cert, key) = self_signed_certificate(&tls);
        let https_port = free_port();
        let config = format!(
            "<https_port>{https_port}</https_port>
  <openSSL><server><certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile><verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile><cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols><preferServerCiphers>true</preferServerCiphers></server></openSSL>",
            cert.display(),
            key.display()
        );
        let users = format!(
            "<{user}><password>{password}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></{user}>"
        );
        (
            ClickHouseServer::start_with(dir, &config, &users),
            https_port,
        )
    }

    fn start_with(dir: &Path, extra_config: &str, extra_users: &str) -> ClickHouseServer {
        let dir = dir.join("clickhouse");
        for sub in ["data", "tmp", "log", "user_files"] {
            std::fs::create_dir_all(dir.join(sub)).expect("clickhouse dirs");
        }
        let (http_port, tcp_port) = (free_port(), free_port());
        let d = dir.display();
        let config = dir.join("config.xml");
        std::fs::write(
            &config,
            format!(
                "<yandex>
  <logger><level>warning</level><log>{d}/log/clickhouse.log</log><errorlog>{d}/log/err.log</errorlog><console>0</console></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  {extra_config}
</yandex>
"
            ),
        )
        .expect("clickhouse config");
        std::fs::write(
            dir.join("users.xml"),
            format!("<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default>{extra_users}</users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"),
        )
        .expect("clickhouse users");
        let mut s = ClickHouseServer {
            child: None,
            dir,
            http_port,
            config,
        };
        s.resume();
        s
    }

    /// Starts (again) on the same data directory and port.
    pub fn resume(&mut self) {
        let bin = find_binary(
            "clickhouse-server",
            &["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"],
        );
        let log = std::fs::File::create(self.dir.join("log/stdout.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config-file={}", self.config.display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("clickhouse-server starts");
        self.child = Some(child);
        let port = self.http_port;
        wait_for("clickhouse", Duration::from_secs(60), || {
            self.query("SELECT 1").is_ok_and(|r| r.trim() == "1")
        });
        let _ = port;
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs a query over HTTP; returns the TSV answer.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        http_post(self.http_port, sql)
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP POST to ClickHouse on loopback (keeps the tests free of an HTTP client).
pub fn http_post(port: u16, body: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("bad HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// A minimal HTTP GET on loopback: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers (`"Name: value"`).
pub fn http_get_with(addr: &str, path: &str, headers: &[&str]) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("bad HTTP response")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (`cert.pem`, `key.pem` in `dir`),
/// made with the `openssl` command.
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// A tansu broker on sqlite storage.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    /// The port clients are told to connect to, when not `port` (a TLS proxy in front).
    pub advertised: Option<u16>,
    bin: PathBuf,
    dir: PathBuf,
}

impl Tansu {
    pub fn start(dir: &Path) -> Tansu {
        let mut t = Tansu {
            child: None,
            port: free_port(),
            advertised: None,
            bin: find_binary("tansu", &[]),
            dir: dir.to_path_buf(),
        };
        t.resume();
        t
    }

    /// Starts the broker (again) on the same port and storage.
    pub fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("log");
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                // tansu resolves the path against its working directory.
                "sqlite://tansu.db",
            ])
            .current_dir(&self.dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let port = self.port;
        wait_for("tansu", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL: the broker disappears mid-conversation.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "topic create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of ClickHouse that loses the answer to every `every`-th insert: the
/// server has written the rows, but the client sees its connection drop, as when a network
/// path or a load balancer fails at the wrong moment.
pub struct AnswerLosingProxy {
    pub port: u16,
    /// Inserts whose answer was dropped so far.
    pub lost: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AnswerLosingProxy {
    pub fn start(upstream: u16, every: usize) -> AnswerLosingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let lost = Arc::new(AtomicUsize::new(0));
        let inserts = Arc::new(AtomicUsize::new(0));
        let lost_out = lost.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let insert_sent = Arc::new(AtomicBool::new(false));
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let flag = insert_sent.clone();
                // Requests: forwarded as they are; remembers when one is an insert.
                std::thread::spawn(move || {
                    pump(client, server, |chunk| {
                        let text = String::from_utf8_lossy(chunk);
                        if text.starts_with("POST /?query=INSERT") {
                            flag.store(true, Ordering::SeqCst);
                        }
                        Forward::Pass
                    })
                });
                let (lost, inserts) = (lost.clone(), inserts.clone());
                // Answers: the answer to every `every`-th insert is read to its end (the server
                // has finished the insert) and dropped with the connection.
                std::thread::spawn(move || {
                    let mut swallowed: Option<Vec<u8>> = None;
                    pump(s2, c2, |chunk| {
                        if let Some(held) = swallowed.as_mut() {
                            held.extend_from_slice(chunk);
                        } else if insert_sent.swap(false, Ordering::SeqCst)
                            && (inserts.fetch_add(1, Ordering::SeqCst) + 1) % every == 0
                        {
                            swallowed = Some(chunk.to_vec());
                        } else {
                            return Forward::Pass;
                        }
                        if swallowed
                            .as_ref()
                            .is_some_and(|h| h.ends_with(b"\r\n0\r\n\r\n"))
                        {
                            lost.fetch_add(1, Ordering::SeqCst);
                            return Forward::Close;
                        }
                        Forward::Hold
                    })
                });
            }
        });
        AnswerLosingProxy {
            port,
            lost: lost_out,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

enum Forward {
    Pass,
    /// Keep the chunk back.
    Hold,
    /// Close both connections.
    Close,
}

/// Copies `from` to `to`, chunk by chunk, as `decide` says; then closes both.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    mut decide: impl FnMut(&[u8]) -> Forward,
) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match decide(&buf[..n]) {
            Forward::Pass => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Forward::Hold => {}
            Forward::Close => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
