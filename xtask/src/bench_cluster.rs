//! Scenario S7 of `cargo xtask bench`: cross-instance delivery through Redis. Release builds
//! of `examples/chat` (two instances in cluster mode) and of its load generator
//! (`examples/cluster-load.rs`); a throwaway `redis-server`; every port picked by the OS and
//! every process stopped by its PID. One publisher on instance A, subscribers on instance B,
//! at 1,000 and 5,000 messages a second; latency from the publisher's send to a subscriber's
//! receipt.
//!
//! Target: 100% delivered and p99 <= 10 ms at 1,000 msgs/s on loopback.
//!
//! Then, with a third instance: 10,000 connections over the three and 1,000 rooms, one
//! sender per room, 5,000 (and 1,000) messages a second in all (delivered %, p50/p99); and 1,000 clients
//! that dropped while 100 messages went to their room reconnecting at once, each to another
//! instance, with their last position (time until all have recovered).

use std::{fmt::Write as _, process::Command, time::Duration};

use crate::{
    cargo,
    cluster::{start_chat, start_redis},
    target_dir,
};

const RATES: [u32; 2] = [1_000, 5_000];
/// Clients on instance B that receive every message.
const SUBSCRIBERS: u32 = 10;
/// The many-rooms run: connections over three instances, rooms, messages a second in all.
const CONNECTIONS: u32 = 10_000;
const ROOMS: u32 = 1_000;
/// The issue's rate, and a fifth of it for comparison.
const ROOMS_RATES: [u32; 2] = [1_000, 5_000];
/// The recovery run: clients (in `RECOVERY_ROOMS` rooms), messages each one missed.
const RECOVERING: u32 = 1_000;
const RECOVERY_ROOMS: u32 = 100;
const MISSED: u32 = 100;
/// The columns of a delivery run, as cluster-load reports them.
const DELIVERY: [&str; 7] = [
    "achieved_rate",
    "expected",
    "ratio",
    "duplicates",
    "p50_ms",
    "p99_ms",
    "max_ms",
];

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
    let (_c, c_address) = start_chat(&release.join("chat"), "bench-c", &redis_url, nice)?;
    let load = |args: &[String]| -> Result<String, String> {
        let mut command = if nice {
            let mut command = Command::new("nice");
            command
                .args(["-n", "-10"])
                .arg(release.join("cluster-load"));
            command
        } else {
            Command::new(release.join("cluster-load"))
        };
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("cannot run cluster-load: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cluster-load {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };

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
        let stdout = load(&[
            format!("ws://{a_address}/ws/bench"),
            format!("ws://{b_address}/ws/bench"),
            rate.to_string(),
            seconds.to_string(),
            SUBSCRIBERS.to_string(),
        ])?;
        let _ = writeln!(table, "| {rate} |{}", cells(&stdout, &DELIVERY));
        // Let queues settle between rates.
        std::thread::sleep(Duration::from_millis(500));
    }

    let hosts = format!("{a_address},{b_address},{c_address}");
    let _ = write!(
        table,
        "\nThree `chat` instances: {CONNECTIONS} connections asked for (client i on instance \
         i mod 3, in room i mod {ROOMS}), one sender per room, the rate in all for {seconds} s; \
         every member, the sender too, times every message of its room. A fresh set of \
         connections per rate.\n\n\
         | rate (msgs/s) | connections | setup s | achieved | deliveries | delivered | duplicates | p50 ms | p99 ms | max ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    for rate in ROOMS_RATES {
        eprintln!(
            "xtask bench: S7 with {CONNECTIONS} connections in {ROOMS} rooms at {rate} msgs/s"
        );
        let stdout = load(&[
            "rooms".to_owned(),
            hosts.clone(),
            CONNECTIONS.to_string(),
            ROOMS.to_string(),
            rate.to_string(),
            seconds.to_string(),
        ])?;
        let _ = writeln!(
            table,
            "| {rate} |{}",
            cells(&stdout, &["connections", "setup_s"]) + &cells(&stdout, &DELIVERY)
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    eprintln!("xtask bench: S7 recovery of {RECOVERING} clients");
    let stdout = load(&[
        "recover".to_owned(),
        hosts,
        RECOVERING.to_string(),
        RECOVERY_ROOMS.to_string(),
        MISSED.to_string(),
    ])?;
    let _ = writeln!(
        table,
        "\n{RECOVERING} clients in {RECOVERY_ROOMS} rooms over the three instances drop; \
         {MISSED} messages go to each room; all reconnect at once, each to another instance, \
         with the position of their join line (`?since=`).\n\n\
         | clients | recovered | refused | incomplete | all recovered after ms | p50 ms | p99 ms |\n\
         |---|---|---|---|---|---|---|\n|{}",
        cells(
            &stdout,
            &[
                "clients",
                "recovered",
                "refused",
                "incomplete",
                "all_recovered_ms",
                "p50_ms",
                "p99_ms"
            ]
        ),
    );
    Ok(table)
}

/// Table cells (` a | b |`) of number fields of cluster-load's report line: `ratio` as a
/// percentage, times in ms and the setup in s with decimals, counts without.
fn cells(json: &str, fields: &[&str]) -> String {
    let mut row = String::new();
    for field in fields {
        let value = number(json, field).unwrap_or(f64::NAN);
        let _ = match *field {
            "ratio" => write!(row, " {:.2}% |", value * 100.0),
            "setup_s" => write!(row, " {value:.1} |"),
            name if name.ends_with("_ms") => write!(row, " {value:.2} |"),
            _ => write!(row, " {value:.0} |"),
        };
    }
    row
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
        assert_eq!(
            cells(line, &["duplicates", "ratio", "p99_ms"]),
            " 0 | 100.00% | 1.25 |"
        );
    }
}
