//! The service as a separate process (the `hub-bridge` binary the test or benchmark was built
//! with), so that it can be killed, stopped and resumed like a crash, a pause or a deploy, and its
//! `/readyz` and `/metrics` read over HTTP.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::redis_server::free_port;

/// One `hub-bridge` process, with its own HTTP port.
pub struct ServiceProcess {
    child: Child,
    port: u16,
    name: String,
    /// Killed or stopped, and reaped.
    gone: bool,
}

impl ServiceProcess {
    /// Starts `binary` (`env!("CARGO_BIN_EXE_hub-bridge")`) on `config` (TOML without an `[http]`
    /// section: the process gets its own free port), written into `dir`.
    pub fn start(binary: &str, name: &str, dir: &Path, config: &str) -> Self {
        let port = free_port();
        let path = dir.join(format!("{name}-{port}.toml"));
        let config = format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
        std::fs::write(&path, config).expect("write the config");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            // Every HUB_ variable is read as config; the log filter must not leak in.
            .env_remove("HUB_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hub-bridge");
        Self {
            child,
            port,
            name: name.to_owned(),
            gone: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGKILL: a crash. Returns once the process is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        self.gone = true;
    }

    /// SIGTERM, and waits until the process has stopped on its own, successfully.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let status = self.child.wait().expect("wait for hub-bridge");
        self.gone = true;
        assert!(status.success(), "{} stopped with {status}", self.name);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `/readyz`; `None` until it answers.
    pub async fn readyz(&self) -> Option<Value> {
        let response = reqwest::get(self.url("/readyz")).await.ok()?;
        response.json().await.ok()
    }

    /// Waits (up to `limit`) until this instance runs `bridge` (`running`), or stands by for it
    /// while subscribed to Redis, as `/readyz` says.
    pub async fn wait_until(&self, bridge: &str, running: bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let readyz = self.readyz().await.unwrap_or_default();
            let component = &readyz["components"][bridge];
            let subscribed = readyz["components"]["redis"]["ready"] == true;
            let standby = component["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("standby"));
            let done = if running {
                component["ready"] == true
            } else {
                subscribed && standby
            };
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never {} {bridge}: {readyz}",
                self.name,
                if running { "ran" } else { "stood by for" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics text")
    }

    /// The metric `name` (`hub_bridge_relayed_total`), summed over its labels.
    pub async fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
        // A stopped process is resumed first, so that it dies of the SIGKILL at once.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
