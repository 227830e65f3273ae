//! `hub-bridge check`: validates the config, checks Redis (PING, a pub/sub round trip, a key
//! written, read and deleted under the prefix) and each bridge's token, and prints a report.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use hub_bridge_sdk::Keys;
use redis::AsyncCommands;

use crate::config::Config;
use crate::service::configured_bridges;

const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// One checked thing.
pub struct Line {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The whole report; prints one line per check, then what was found without checking it.
#[derive(Default)]
pub struct Report {
    pub lines: Vec<Line>,
    /// Facts about the configuration worth knowing (`info` lines); not checks, never failures.
    pub notes: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.lines.push(Line {
            name: name.into(),
            ok,
            detail,
        });
    }

    pub fn passed(&self) -> bool {
        self.lines.iter().all(|line| line.ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            let mark = if line.ok { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {:<16} {}", line.name, line.detail)?;
        }
        for (name, detail) in &self.notes {
            writeln!(f, "info {name:<16} {detail}")?;
        }
        let failed = self.lines.iter().filter(|line| !line.ok).count();
        if failed == 0 {
            writeln!(f, "all {} checks passed", self.lines.len())
        } else {
            writeln!(f, "{failed} of {} checks failed", self.lines.len())
        }
    }
}

/// Runs every check against a config that already parsed and validated.
pub async fn run(config: &Config, config_path: &Path) -> Report {
    let mut report = Report::default();
    report.add("config", Ok(format!("{} is valid", config_path.display())));
    match &config.redis.url {
        Some(url) => {
            let keys = Keys::new(config.hub.key_prefix.clone());
            check_redis(url.expose(), &keys, &mut report).await;
        }
        None => report.add(
            "bus",
            Ok("no redis.url: the embedded in-process bus (nothing to check)".to_owned()),
        ),
    }
    for bridge in configured_bridges(config) {
        let result = tokio::time::timeout(STEP_TIMEOUT * 2, bridge.check())
            .await
            .map_err(|_| "no answer within 10 s".to_owned())
            .and_then(|result| result.map_err(|error| error.to_string()));
        report.add(format!("{} token", bridge.name()), result);
    }
    report
        .notes
        .push(("agent api".to_owned(), agent_api(config)));
    report
}

/// Whether the agent API is on, and for which agents (never their tokens).
fn agent_api(config: &Config) -> String {
    let agents: Vec<&str> = config
        .agents
        .iter()
        .filter(|(_, profile)| profile.api_token.is_some())
        .map(|(id, _)| id.as_str())
        .collect();
    if agents.is_empty() {
        return "disabled: no [agents.*] api_token (/v1 answers 404)".to_owned();
    }
    format!(
        "enabled on http://{}/v1 for {}",
        config.http.listen,
        agents.join(", ")
    )
}

async fn step<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        // redis-rs errors do not quote the URL, so they are safe to print.
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    }
}

async fn check_redis(url: &str, keys: &Keys, report: &mut Report) {
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(error) => return report.add("redis", Err(error.to_string())),
    };
    let mut connection = match step(client.get_multiplexed_async_connection()).await {
        Ok(connection) => connection,
        Err(error) => return report.add("redis ping", Err(format!("cannot connect: {error}"))),
    };
    let pong: Result<String, String> = step(redis::cmd("PING").query_async(&mut connection)).await;
    report.add("redis ping", pong.map(|pong| format!("answered {pong}")));

    let channel = keys.check_probe(&uuid::Uuid::new_v4().to_string());
    let round_trip = async {
        let mut pubsub = step(client.get_async_pubsub()).await?;
        step(pubsub.subscribe(&channel)).await?;
        let _: i64 = step(connection.publish(&channel, "check")).await?;
        let received = tokio::time::timeout(STEP_TIMEOUT, pubsub.on_message().next()).await;
        match received {
            Ok(Some(_)) => Ok("published and received".to_owned()),
            _ => Err("published, but nothing arrived within 5 s".to_owned()),
        }
    };
    report.add("redis pub/sub", round_trip.await);

    let key = keys.check_probe(&uuid::Uuid::new_v4().to_string());
    let key_ops = async {
        let () = step(connection.set_ex(&key, "check", 30)).await?;
        let read: Option<String> = step(connection.get(&key)).await?;
        let deleted: i64 = step(connection.del(&key)).await?;
        match (read.as_deref(), deleted) {
            (Some("check"), 1) => Ok(format!("wrote, read and deleted {key}")),
            _ => Err(format!("{key} did not read back")),
        }
    };
    report.add("redis keys", key_ops.await);
}
