//! A private `redis-server` for one test: started on a free loopback port, killed (not stopped)
//! and restarted on the same port for outage tests, and killed when dropped. The same process
//! also plays a replica (`--replicaof`) or a Redis Sentinel (`--sentinel`, its config file in the
//! server's temporary directory) for the failover tests.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    role: Role,
    /// A data node's `requirepass` (and a replica's `masterauth`); in [`Self::url`].
    password: Option<String>,
}

/// What the process is started as.
enum Role {
    Primary,
    Replica {
        of: u16,
    },
    /// The config file is written once: Sentinel rewrites it with what it learns (the other
    /// Sentinels, the replicas, a failover), and keeps it across a restart.
    Sentinel,
}

impl RedisServer {
    /// Starts a fresh server; panics with the reason when `redis-server` is missing.
    pub fn start() -> Self {
        Self::start_as(Role::Primary, None)
    }

    /// [`Self::start`], refusing clients without `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_as(Role::Primary, Some(password.to_owned()))
    }

    /// Starts a replica of `primary` (with its password, if any) and waits until its replication
    /// link is up (the initial sync done), so what the primary holds from now on reaches it.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let replica = Self::start_as(Role::Replica { of: primary.port }, primary.password.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(replica.url()).expect("client");
        loop {
            let info: Option<String> = client
                .get_connection()
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
                .ok();
            if info.is_some_and(|info| info.contains("master_link_status:up")) {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "replica on {} never synced with {}",
                replica.port,
                primary.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a Redis Sentinel monitoring `primary` as `master_name` with `quorum`, quick to act:
    /// a primary is down after 1 s without an answer, a failover may take 5 s. The Sentinel itself
    /// asks for no password; it uses the primary's (`auth-pass`).
    pub fn start_sentinel(master_name: &str, primary: &RedisServer, quorum: u32) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {master_name} 127.0.0.1 {primary} {quorum}\n\
             sentinel down-after-milliseconds {master_name} 1000\n\
             sentinel failover-timeout {master_name} 5000\n",
            dir = dir.path().display(),
            primary = primary.port,
        );
        if let Some(password) = &primary.password {
            config.push_str(&format!("sentinel auth-pass {master_name} {password}\n"));
        }
        std::fs::write(dir.path().join("sentinel.conf"), config).expect("sentinel config");
        let mut sentinel = Self {
            port,
            child: None,
            dir,
            role: Role::Sentinel,
            password: None,
        };
        sentinel.spawn();
        sentinel
    }

    fn start_as(role: Role, password: Option<String>) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            port,
            child: None,
            dir,
            role,
            password,
        };
        server.spawn();
        server
    }

    /// On a Sentinel: `SENTINEL MASTER master_name`, the fields as a map (`ip`, `port`,
    /// `num-slaves`, `num-other-sentinels`, `flags`, ...).
    pub async fn sentinel_master(&self, master_name: &str) -> HashMap<String, String> {
        redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(master_name)
            .query_async(&mut self.connection().await)
            .await
            .expect("SENTINEL MASTER on the test sentinel")
    }

    /// On a Sentinel: waits until it knows `other_sentinels` other Sentinels and `replicas`
    /// replicas of `master_name` (they find each other through the primary, every 2 s), so that
    /// a failover can reach its quorum.
    pub async fn wait_for_sentinel_view(
        &self,
        master_name: &str,
        other_sentinels: usize,
        replicas: usize,
    ) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let master = self.sentinel_master(master_name).await;
            let count = |field: &str| {
                master
                    .get(field)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if count("num-other-sentinels") >= other_sentinels && count("num-slaves") >= replicas {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel on {} never saw {other_sentinels} sentinels and {replicas} replicas: {master:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the server answers `ROLE` as a primary (`master`).
    pub async fn is_primary(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        let role: redis::RedisResult<redis::Value> =
            redis::cmd("ROLE").query_async(&mut connection).await;
        match role {
            Ok(redis::Value::Array(items)) => {
                matches!(items.first(), Some(redis::Value::BulkString(kind)) if kind == b"master")
            }
            _ => false,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain connection for the test's own commands.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Makes the server refuse every write with `OOM` (`maxmemory 1`, `noeviction`), as a full
    /// or failing Redis would, or accept writes again.
    pub async fn refuse_writes(&self, refuse: bool) {
        let mut connection = self.connection().await;
        let settings = [
            ("maxmemory-policy", "noeviction"),
            ("maxmemory", if refuse { "1" } else { "0" }),
        ];
        for (key, value) in settings {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(key)
                .arg(value)
                .query_async(&mut connection)
                .await
                .expect("CONFIG SET on the test redis-server");
        }
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        match self.role {
            Role::Sentinel => {
                command
                    .arg(self.dir.path().join("sentinel.conf"))
                    .arg("--sentinel");
            }
            Role::Primary | Role::Replica { .. } => {
                command
                    .args(["--port", &self.port.to_string()])
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(self.dir.path());
            }
        }
        if let Role::Replica { of } = self.role {
            command.args(["--replicaof", "127.0.0.1", &of.to_string()]);
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("client");
        loop {
            if let Ok(mut connection) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}
