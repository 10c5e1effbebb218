//! The load generator against every benchmark server, in each of its modes.

use crate::support::{WAIT, fields, loadgen, number, server, server_with, start};

const SHORT: [&str; 4] = ["--duration", "0.3", "--warmup", "0.1"];

fn echo(url: &str, options: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut args = vec!["echo", url];
    args.extend_from_slice(options);
    args.extend_from_slice(&SHORT);
    loadgen(&args)
}

#[test]
fn both_baselines_echo_text_and_binary_and_every_reply_checks_out() {
    for program in [
        env!("CARGO_BIN_EXE_raw-sockudo-echo"),
        env!("CARGO_BIN_EXE_raw-tungstenite-echo"),
    ] {
        let (_server, address) = server(program);
        let url = format!("ws://{address}/ws");
        for options in [
            [
                "--connections",
                "4",
                "--kind",
                "text",
                "--size",
                "32",
                "--in-flight",
                "8",
            ],
            [
                "--connections",
                "2",
                "--kind",
                "binary",
                "--size",
                "65536",
                "--in-flight",
                "2",
            ],
        ] {
            let result = echo(&url, &options);
            assert_eq!(number(&result, "errors"), 0.0, "{program}: {result:?}");
            assert!(number(&result, "messages") > 0.0, "{program}: {result:?}");
        }
    }
}

#[test]
fn the_json_route_binds_and_returns_the_same_bytes() {
    let (_server, address) = server(env!("CARGO_BIN_EXE_gofr-bench-server"));
    let url = format!("ws://{address}/json");
    let result = echo(
        &url,
        &["--connections", "4", "--kind", "json", "--size", "200"],
    );
    assert_eq!(number(&result, "errors"), 0.0, "{result:?}");
    assert!(number(&result, "messages") > 0.0, "{result:?}");
}

#[test]
fn a_reply_that_differs_from_what_was_sent_is_an_error() {
    // Plain text is not the JSON object the route binds: the server answers with an error
    // frame, which the generator must not take for an echo.
    let (_server, address) = server(env!("CARGO_BIN_EXE_gofr-bench-server"));
    let url = format!("ws://{address}/json");
    let result = echo(
        &url,
        &["--connections", "3", "--kind", "text", "--size", "32"],
    );
    assert_eq!(number(&result, "errors"), 3.0, "{result:?}");
    assert_eq!(number(&result, "messages"), 0.0, "{result:?}");
}

#[test]
fn a_broadcast_reaches_every_receiver_in_every_round() {
    let (_server, address) = server(env!("CARGO_BIN_EXE_gofr-bench-server"));
    let result = loadgen(&[
        "broadcast",
        &format!("ws://{address}/ws"),
        "--trigger",
        &format!("ws://{address}/broadcast"),
        "--connections",
        "20",
        "--rounds",
        "3",
    ]);
    assert_eq!(number(&result, "errors"), 0.0, "{result:?}");
    assert_eq!(number(&result, "receivers"), 20.0, "{result:?}");
    assert!(number(&result, "last_ms_worst") >= number(&result, "last_ms_median"));
}

#[test]
fn idle_connections_echo_once_then_wait_until_stdin_closes() {
    let (_server, address) = server(env!("CARGO_BIN_EXE_raw-sockudo-echo"));
    let url = format!("ws://{address}/ws");
    let mut idle = start(
        env!("CARGO_BIN_EXE_loadgen"),
        &["idle", &url, "--connections", "20", "--hold", "30"],
        &[],
    );
    let ready = fields(&idle.line_with("ready ", WAIT));
    assert_eq!(number(&ready, "connections"), 20.0, "{ready:?}");
    assert_eq!(number(&ready, "errors"), 0.0, "{ready:?}");
    drop(idle.take_stdin());
    let result = fields(&idle.line_with("result ", WAIT));
    assert_eq!(number(&result, "connections"), 20.0, "{result:?}");
    assert!(idle.wait_exit(WAIT).success());
}

#[test]
fn compressed_connections_echo_once_then_wait_on_both_servers() {
    // S5d: our server (the bench server turns permessage-deflate on) and raw sockudo-ws with
    // DEFLATE=1; the generator fails a connection whose server declines the offer.
    for (program, env) in [
        (env!("CARGO_BIN_EXE_gofr-bench-server"), &[][..]),
        (
            env!("CARGO_BIN_EXE_raw-sockudo-echo"),
            &[("DEFLATE", "1")][..],
        ),
    ] {
        let (_server, address) = server_with(program, env);
        let url = format!("ws://{address}/ws");
        let mut idle = start(
            env!("CARGO_BIN_EXE_loadgen"),
            &[
                "idle",
                &url,
                "--connections",
                "10",
                "--hold",
                "30",
                "--deflate",
                "--kind",
                "json",
                "--size",
                "250",
            ],
            &[],
        );
        let ready = fields(&idle.line_with("ready ", WAIT));
        assert_eq!(number(&ready, "connections"), 10.0, "{program}: {ready:?}");
        assert_eq!(number(&ready, "errors"), 0.0, "{program}: {ready:?}");
        drop(idle.take_stdin());
        assert!(idle.wait_exit(WAIT).success());
    }
}

#[test]
fn a_server_that_declines_deflate_fails_the_compressed_connections() {
    let (_server, address) = server(env!("CARGO_BIN_EXE_raw-sockudo-echo"));
    let url = format!("ws://{address}/ws");
    let idle = start(
        env!("CARGO_BIN_EXE_loadgen"),
        &[
            "idle",
            &url,
            "--connections",
            "3",
            "--hold",
            "30",
            "--deflate",
        ],
        &[],
    );
    let ready = fields(&idle.line_with("ready ", WAIT));
    assert_eq!(number(&ready, "connections"), 0.0, "{ready:?}");
    assert_eq!(number(&ready, "errors"), 3.0, "{ready:?}");
}

#[test]
fn a_compressed_broadcast_reaches_every_receiver_through_both_routes() {
    // S8: through the hub and sent to each connection; every copy compressed and checked. The
    // floor (the protocol core alone, S8's bound) serves the same routes, one run at a time.
    for program in [
        env!("CARGO_BIN_EXE_gofr-bench-server"),
        env!("CARGO_BIN_EXE_broadcast-floor"),
    ] {
        compressed_broadcast_through_both_routes(program);
    }
}

fn compressed_broadcast_through_both_routes(program: &str) {
    let (_server, address) = server(program);
    for route in ["/broadcast", "/broadcast-each"] {
        let result = loadgen(&[
            "broadcast",
            &format!("ws://{address}/ws"),
            "--trigger",
            &format!("ws://{address}{route}"),
            "--connections",
            "20",
            "--rounds",
            "3",
            "--deflate",
            "--kind",
            "jsondoc",
            "--size",
            "16384",
        ]);
        assert_eq!(
            number(&result, "errors"),
            0.0,
            "{program} {route}: {result:?}"
        );
        assert_eq!(
            number(&result, "receivers"),
            20.0,
            "{program} {route}: {result:?}"
        );
        assert_eq!(
            number(&result, "compressed_copies"),
            60.0,
            "{program} {route}: {result:?}"
        );
        assert!(
            number(&result, "wire_bytes") < 16384.0 / 2.0,
            "{program} {route}: {result:?}"
        );
    }
}
