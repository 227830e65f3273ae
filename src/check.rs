//! `hub-bridge check`: validates the config, checks Redis (PING, a pub/sub round trip, a key
//! written, read and deleted under the prefix) and each bridge's token, and prints a report.
//! With `redis.sentinels` it first reports the Sentinels' view (the primary, its replicas, the
//! quorum) and then checks Redis on the primary they name.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use hub_bridge_sdk::Keys;
use redis::{AsyncCommands, IntoConnectionInfo};

use crate::bus::redis::node_settings;
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
    let keys = Keys::new(config.hub.key_prefix.clone());
    match (
        &config.redis.url,
        &config.redis.sentinels,
        &config.redis.master_name,
    ) {
        (Some(url), _, _) => match redis::Client::open(url.expose()) {
            Ok(client) => check_redis(&client, &keys, &mut report).await,
            Err(error) => report.add("redis", Err(error.to_string())),
        },
        (None, Some(sentinels), Some(master_name)) => {
            let urls: Vec<&str> = sentinels.iter().map(|url| url.expose()).collect();
            let wanted = config.redis.wait_replicas;
            let password = config.redis.password.as_ref().map(|p| p.expose());
            let primary = check_sentinels(&urls, master_name, password, wanted, &mut report).await;
            if let Some(primary) = primary {
                check_redis(&primary, &keys, &mut report).await;
            }
        }
        _ => report.add(
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

/// Asks the Sentinels in turn until one answers `SENTINEL MASTER`, and reports its view: the
/// primary, the replicas (failing when fewer are healthy than `redis.wait_replicas`) and
/// `SENTINEL CKQUORUM`. Returns a client for the primary. Sentinels are named by `host:port`,
/// never by URL (it may carry a password).
async fn check_sentinels(
    urls: &[&str],
    master_name: &str,
    password: Option<&str>,
    wait_replicas: u32,
    report: &mut Report,
) -> Option<redis::Client> {
    let mut failures = Vec::new();
    for url in urls {
        let Ok(client) = redis::Client::open(*url) else {
            failures.push("a URL redis-rs cannot open".to_owned());
            continue;
        };
        let sentinel = client.get_connection_info().addr().to_string();
        let mut connection = match step(client.get_multiplexed_async_connection()).await {
            Ok(connection) => connection,
            Err(error) => {
                failures.push(format!("{sentinel}: {error}"));
                continue;
            }
        };
        let sentinel_cmd = |sub: &str| {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg(sub).arg(master_name);
            cmd
        };
        let master: HashMap<String, String> =
            match step(sentinel_cmd("MASTER").query_async(&mut connection)).await {
                Ok(master) => master,
                Err(error) => {
                    failures.push(format!("{sentinel}: {error}"));
                    continue;
                }
            };
        let (Some(ip), Some(port)) = (
            master.get("ip"),
            master.get("port").and_then(|p| p.parse::<u16>().ok()),
        ) else {
            failures.push(format!("{sentinel}: no address for `{master_name}`"));
            continue;
        };
        let flags = master.get("flags").map_or("", String::as_str);
        let primary_ok = !flags.contains("s_down") && !flags.contains("o_down");
        let detail =
            format!("primary of `{master_name}` is {ip}:{port} ({flags}), as {sentinel} sees it");
        report.add(
            "sentinel primary",
            if primary_ok { Ok(detail) } else { Err(detail) },
        );

        let replicas: Result<Vec<HashMap<String, String>>, String> =
            step(sentinel_cmd("REPLICAS").query_async(&mut connection)).await;
        report.add(
            "sentinel replicas",
            replicas.and_then(|replicas| describe_replicas(&replicas, wait_replicas)),
        );
        let quorum: Result<String, String> =
            step(sentinel_cmd("CKQUORUM").query_async(&mut connection)).await;
        report.add("sentinel quorum", quorum);

        let primary = redis::ConnectionAddr::Tcp(ip.clone(), port)
            .into_connection_info()
            .map(|info| info.set_redis_settings(node_settings(password)));
        return match primary.and_then(redis::Client::open) {
            Ok(client) => Some(client),
            Err(error) => {
                report.add("redis", Err(error.to_string()));
                None
            }
        };
    }
    report.add(
        "sentinel primary",
        Err(format!(
            "no sentinel answered SENTINEL MASTER {master_name}: {}",
            failures.join("; ")
        )),
    );
    None
}

/// The replicas as `host:port (flags)`; an error when fewer are healthy than `wanted`.
fn describe_replicas(replicas: &[HashMap<String, String>], wanted: u32) -> Result<String, String> {
    let mut healthy = 0;
    let listed: Vec<String> = replicas
        .iter()
        .map(|replica| {
            let field = |name: &str| replica.get(name).map_or("?", String::as_str);
            let flags = field("flags");
            if !["s_down", "o_down", "disconnected"]
                .iter()
                .any(|bad| flags.contains(bad))
            {
                healthy += 1;
            }
            format!("{}:{} ({flags})", field("ip"), field("port"))
        })
        .collect();
    let listed = if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join(", ")
    };
    let detail = format!("{healthy} healthy: {listed}");
    if healthy < wanted {
        return Err(format!("{detail}; redis.wait_replicas is {wanted}"));
    }
    Ok(detail)
}

async fn check_redis(client: &redis::Client, keys: &Keys, report: &mut Report) {
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
