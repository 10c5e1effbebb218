// The interop script for the Node.js `ws` client (npm, pinned in package.json).
//
// Checks, against a server that echoes every message (the `echo` example):
// - 1,000 messages of mixed sizes (0, 1, 125, 126, 127, 128 B, 64 KiB and 1 byte either side,
//   1 MiB, the rest up to 2 KiB), text with multi-byte UTF-8 and binary, generated from a fixed
//   seed, sent while the echoes are read, come back equal and in order;
// - 10 pings with payloads of 0 to 125 bytes are answered by pongs with the same payloads, in
//   order;
// - the message connection closes with 1000, and two more connections with 1001 and 4000: the
//   server's close frame carries the same code.
// The same schedule as interop.py and the tokio-tungstenite client in examples/tests/interop.rs.
// With deflate on, every message is compressed (threshold 0), the smallest included.
//
// Usage: node interop.js URL [--deflate] [--no-context-takeover]
//   --deflate              offer permessage-deflate
//   --no-context-takeover  ask for server_no_context_takeover and client_no_context_takeover
// Prints one summary line, `interop: ...; extensions: <the server's Sec-WebSocket-Extensions>`,
// and exits 0; on any mismatch it says what differed on stderr and exits 1.
// Run by `cargo test -p examples --test interop`, which starts the server, sets NODE_PATH to
// where `ws` is installed and judges the negotiated extensions.
"use strict";

const WebSocket = require("ws");
const WS_VERSION = require("ws/package.json").version;

const { CLOSE_CODES, messages, pingPayload, bytesOf } = require("./schedule.js");
// Longest wait for any one step, in milliseconds.
const WAIT_MS = 20000;

const args = process.argv.slice(2);
const url = args.find((a) => !a.startsWith("--"));
const deflate = args.includes("--deflate");
const noContextTakeover = args.includes("--no-context-takeover");

function describe(data, isBinary) {
  return `${isBinary ? "binary" : "text"} of ${Buffer.byteLength(data)} bytes`;
}

// Without --no-context-takeover the client offers context takeover and takes what the server
// answers, as ws's default does: an explicit `clientNoContextTakeover: false` would make ws
// refuse a server that asks it to reset its context (RFC 7692 §7.1.1.2 lets a server ask).
function options() {
  const takeover = noContextTakeover
    ? { serverNoContextTakeover: true, clientNoContextTakeover: true }
    : {};
  return {
    maxPayload: 4 << 20,
    handshakeTimeout: WAIT_MS,
    perMessageDeflate: deflate ? { ...takeover, threshold: 0 } : false,
  };
}

// Opens a connection and runs `script(ws, fail)`, which sends and checks; `fail(reason)` ends
// the connection with an error. Resolves with the extensions header once the server's close
// frame carries `code`, sent by the script with ws.close(code).
function connection(code, script) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options());
    let extensions = "none";
    let failed = false;
    const fail = (reason) => {
      if (failed) return;
      failed = true;
      clearTimeout(timer);
      ws.terminate();
      reject(new Error(reason));
    };
    const timer = setTimeout(() => fail(`connection (close ${code}) took too long`), 3 * WAIT_MS);
    ws.on("upgrade", (response) => {
      extensions = response.headers["sec-websocket-extensions"] || "none";
    });
    ws.on("error", (e) => fail(e.message));
    ws.on("open", () => script(ws, fail));
    ws.on("close", (answer) => {
      clearTimeout(timer);
      if (failed) return;
      if (answer !== code) fail(`closed with ${code}, the server answered ${answer}`);
      else resolve(extensions);
    });
  });
}

// The message connection: all messages and pings, then close 1000.
function exchange(expected) {
  const pings = [];
  const pongs = [];
  const run = connection(CLOSE_CODES[0], (ws, fail) => {
    let next = 0;
    // Closes once every echo and every pong is in; the server answers pings in order.
    const maybeDone = () => {
      if (next < expected.length || pongs.length < pings.length) return;
      if (pongs.some((p, k) => !p.equals(pings[k]))) {
        fail("a pong's payload differs from its ping's");
      } else {
        ws.close(CLOSE_CODES[0], "interop");
      }
    };
    ws.on("pong", (data) => {
      pongs.push(data);
      if (pongs.length > pings.length) fail(`${pongs.length} pongs for ${pings.length} pings`);
      else maybeDone();
    });
    ws.on("message", (data, isBinary) => {
      const want = expected[next];
      const wantBinary = typeof want !== "string";
      const same = isBinary === wantBinary && data.equals(bytesOf(want));
      if (!same) {
        fail(`message ${next}: sent ${describe(want, wantBinary)}, got back ${describe(data, isBinary)}`);
        return;
      }
      next += 1;
      maybeDone();
    });
    expected.forEach((message, i) => {
      ws.send(message);
      if (i % 100 === 99) {
        const payload = pingPayload(pings.length);
        pings.push(payload);
        ws.ping(payload);
      }
    });
  });
  return run.then((extensions) => ({ extensions, pings: pings.length }));
}

// One short connection: one message echoed, then close with `code`.
function closeOnly(code) {
  return connection(code, (ws, fail) => {
    ws.on("message", (data, isBinary) => {
      if (isBinary || data.toString() !== "bye") {
        fail(`close ${code} connection: sent 'bye', got back ${describe(data, isBinary)}`);
      } else {
        ws.close(code, "interop");
      }
    });
    ws.send("bye");
  });
}

async function main() {
  let variant = `deflate=${deflate ? "on" : "off"}`;
  if (deflate) variant += ` context-takeover=${noContextTakeover ? "off" : "on"}`;
  const expected = messages();
  const total = expected.reduce((sum, m) => sum + bytesOf(m).length, 0);
  const started = Date.now();
  try {
    const { extensions, pings } = await exchange(expected);
    for (const code of CLOSE_CODES.slice(1)) await closeOnly(code);
    console.log(
      `interop: node ws ${WS_VERSION} ${variant}: ${expected.length} messages ` +
        `(${(total / (1 << 20)).toFixed(1)} MiB) echoed in order, ${pings} pongs, ` +
        `closes ${CLOSE_CODES.join(" ")} answered in kind, ${Date.now() - started} ms; ` +
        `extensions: ${extensions}`,
    );
  } catch (e) {
    console.error(`interop: node ws ${WS_VERSION} ${variant}: FAILED: ${e.message}`);
    process.exit(1);
  }
}

main();
