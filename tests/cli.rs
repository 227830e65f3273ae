//! The `hub-bridge` binary as an operator meets it: bad config exits 2 with one line naming the
//! key, the example config starts and answers `/healthz`, SIGTERM stops it cleanly, and
//! `hub-bridge check` passes against a live Redis and fails clearly against a dead port.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hub_bridge_testkit::redis_server::{free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_hub-bridge");

fn hub_bridge(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("HUB_LOG");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

fn with_config<T>(toml: &str, run: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub-bridge.toml");
    std::fs::write(&path, toml).unwrap();
    run(&path)
}

/// Asserts exit code 2 and exactly one line on stderr that names `key`.
fn assert_rejected(output: &Output, key: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.contains(key), "`{key}` not named in: {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn a_missing_config_file_is_rejected() {
    let output = hub_bridge(&["--config", "/nonexistent/hub.toml"], &[]);
    assert_rejected(&output, "/nonexistent/hub.toml");
    assert!(String::from_utf8_lossy(&output.stderr).contains("file not found"));
}

#[test]
fn each_bad_config_is_rejected_naming_the_key() {
    let telegram = "[telegram]\ntoken = \"1:A\"\n";
    let cases = [
        ("[hub\nkey_prefix = \"x\"\n", "line 1"),
        ("[hub]\nkey_prefx = \"x\"\n", "hub.key_prefx"),
        ("[limits]\nmessage = \"ten\"\n", "limits.message"),
        ("[telegram]\ntoken = \"\"\n", "telegram.token"),
        ("[telegram]\n", "telegram.token"),
        ("[discord]\ntoken = \" \"\n", "discord.token"),
        (&format!("{telegram}api_url = \"not a url\"\n"), "telegram.api_url"),
        ("[redis]\nurl = \"http://127.0.0.1:6379\"\n", "redis.url"),
        ("[http]\nlisten = \"localhost\"\n", "http.listen"),
        (
            &format!("{telegram}[[telegram.links]]\nchannel = \"C\"\nchat = -1\n[[telegram.links]]\nchannel = \"C\"\nchat = -1\n"),
            "telegram.links[1]",
        ),
        (
            "[discord]\ntoken = \"t\"\n[[discord.links]]\nchannel = \"C\"\ndiscord_channel = \"1\"\nwebhook_url = \"https://discord.com/api/nothooks/1/x\"\n",
            "discord.links[0].webhook_url",
        ),
    ];
    for (toml, key) in cases {
        let output = with_config(toml, |path| {
            hub_bridge(&["--config", path.to_str().unwrap()], &[])
        });
        assert_rejected(&output, key);
    }
}

#[test]
fn environment_overrides_are_validated_too() {
    let output = with_config("", |path| {
        hub_bridge(
            &["--config", path.to_str().unwrap()],
            &[("HUB_REDIS__URL", "not-a-url")],
        )
    });
    assert_rejected(&output, "redis.url");
}

#[test]
fn tokens_never_appear_in_config_errors() {
    let toml = "[telegram]\ntoken = \"123:SECRETTOKEN\"\napi_url = \"ftp://x\"\n[discord]\ntoken = \"DISCORDSECRET\"\n[[discord.links]]\nchannel = \"C\"\ndiscord_channel = \"1\"\nwebhook_url = \"https://x/api/webhooks/1/HOOKSECRET/extra\"\n";
    let output = with_config(toml, |path| {
        hub_bridge(&["--config", path.to_str().unwrap()], &[])
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    for secret in ["SECRETTOKEN", "DISCORDSECRET", "HOOKSECRET"] {
        assert!(!stderr.contains(secret), "{secret} leaked: {stderr}");
    }
}

#[test]
fn the_log_filter_variable_is_not_a_config_key() {
    let output = with_config("", |path| {
        let mut command = Command::new(BIN);
        command.args(["check", "--config", path.to_str().unwrap()]);
        command.env("HUB_LOG", "debug").output().unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn version_and_help_work() {
    let version = hub_bridge(&["--version"], &[]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("hub-bridge "));
    let help = hub_bridge(&["--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("check") && help.contains("--config"),
        "{help}"
    );
}

#[tokio::test]
async fn the_example_config_runs_on_the_embedded_bus_and_stops_on_sigterm() {
    let listen = format!("127.0.0.1:{}", free_port());
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/hub-bridge.example.toml"
    );
    let mut child = Command::new(BIN)
        .args(["--config", example])
        .env("HUB_HTTP__LISTEN", &listen)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        if let Ok(response) = reqwest::get(format!("http://{listen}/healthz")).await {
            break response;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["components"]["bus"]["ready"], true);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn check_passes_against_a_live_redis() {
    let redis = RedisServer::start();
    let toml = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let output = with_config(&toml, |path| {
        hub_bridge(&["check", "--config", path.to_str().unwrap()], &[])
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for line in [
        "redis ping",
        "redis pub/sub",
        "redis keys",
        "all 4 checks passed",
    ] {
        assert!(stdout.contains(line), "`{line}` missing: {stdout}");
    }
}

#[test]
fn check_fails_clearly_against_a_dead_port() {
    let toml = format!("[redis]\nurl = \"redis://127.0.0.1:{}\"\n", free_port());
    let output = with_config(&toml, |path| {
        hub_bridge(&["check", "--config", path.to_str().unwrap()], &[])
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL redis ping"), "{stdout}");
    assert!(stdout.contains("cannot connect"), "{stdout}");
}
