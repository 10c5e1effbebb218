//! Scenario S7 of `cargo xtask bench`: cross-instance delivery through Redis. Release builds
//! of `examples/chat` (two instances in cluster mode) and of its load generator
//! (`examples/cluster-load.rs`); a throwaway `redis-server`; every port picked by the OS and
//! every process stopped by its PID. One publisher on instance A, subscribers on instance B,
//! at 1,000 and 5,000 messages a second; latency from the publisher's send to a subscriber's
//! receipt.
//!
//! Target: 100% delivered and p99 <= 10 ms at 1,000 msgs/s on loopback.

use std::{fmt::Write as _, process::Command, time::Duration};

use crate::{
    cargo,
    cluster::{start_chat, start_redis},
    target_dir,
};

const RATES: [u32; 2] = [1_000, 5_000];
/// Clients on instance B that receive every message.
const SUBSCRIBERS: u32 = 10;

/// Runs the scenario for `seconds` per rate and returns its section of the report.
pub(crate) fn section(seconds: f64, nice: bool) -> Result<String, String> {
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "examples",
            "--example",
            "chat",
            "--example",
            "cluster-load",
        ],
        &[],
    )?;
    let release = target_dir().join("release/examples");
    let (_redis, redis_url) = start_redis(nice)?;
    let (_a, a_address) = start_chat(&release.join("chat"), "bench-a", &redis_url, nice)?;
    let (_b, b_address) = start_chat(&release.join("chat"), "bench-b", &redis_url, nice)?;

    let mut table = format!(
        "\n## S7: cross-instance delivery through Redis\n\n\
         Two `chat` instances on one `redis-server`: one publisher on instance A, {SUBSCRIBERS} \
         subscribers on instance B, {seconds} s per rate{}; latency from the publisher's send to \
         a subscriber's receipt. Target: 100% delivered and p99 ≤ 10 ms at 1,000 msgs/s.\n\n\
         | rate (msgs/s) | achieved | deliveries | delivered | duplicates | p50 ms | p99 ms | max ms |\n\
         |---|---|---|---|---|---|---|---|\n",
        if nice { ", everything at nice -10" } else { "" }
    );
    for rate in RATES {
        eprintln!("xtask bench: S7 at {rate} msgs/s");
        let mut load = if nice {
            let mut command = Command::new("nice");
            command
                .args(["-n", "-10"])
                .arg(release.join("cluster-load"));
            command
        } else {
            Command::new(release.join("cluster-load"))
        };
        let output = load
            .arg(format!("ws://{a_address}/ws/bench"))
            .arg(format!("ws://{b_address}/ws/bench"))
            .args([
                rate.to_string(),
                seconds.to_string(),
                SUBSCRIBERS.to_string(),
            ])
            .output()
            .map_err(|e| format!("cannot run cluster-load: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "cluster-load failed at {rate} msgs/s: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let field = |name: &str| number(&stdout, name).unwrap_or(f64::NAN);
        let _ = writeln!(
            table,
            "| {rate} | {:.0} | {:.0} | {:.2}% | {:.0} | {:.2} | {:.2} | {:.2} |",
            field("achieved_rate"),
            field("expected"),
            field("ratio") * 100.0,
            field("duplicates"),
            field("p50_ms"),
            field("p99_ms"),
            field("max_ms"),
        );
        // Let queues settle between rates.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(table)
}

/// A number field of a one-line JSON object, such as `"p99_ms":1.25`.
fn number(json: &str, field: &str) -> Option<f64> {
    let key = format!("\"{field}\":");
    let start = json.find(&key)? + key.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_out_of_the_report_line() {
        let line = r#"{"duplicates":0,"p99_ms":1.25,"ratio":1.0}"#;
        assert_eq!(number(line, "p99_ms"), Some(1.25));
        assert_eq!(number(line, "ratio"), Some(1.0));
        assert_eq!(number(line, "p50_ms"), None);
    }
}
