// The interop schedule in a real browser (headless Chromium through playwright-core), against
// the `echo` example: 1,000 messages of mixed sizes up to 1 MiB (tests/interop/schedule.js),
// text and binary, sent while the echoes are read, come back equal and in order; the server's
// pings are answered (the server pings every 100 ms and closes a peer that stays silent past
// its pong timeout, so the connection lives through an idle second only if the browser
// answers); closes with 1000 and 4000 are answered in kind, cleanly.
//
// Browsers always offer permessage-deflate; what the server answers is the variant, given in
// ECHO_VARIANT: `default` (deflate without context takeover), `takeover` (the server runs with
// WS_CONTEXT_TAKEOVER=1) or `off` (WS_COMPRESSION=off). The page's `ws.extensions` must show it.
//
// Run by `cargo xtask browser-test`, which starts the echo example and sets ECHO_URL
// (ws://addr/ws), ECHO_VARIANT, CHROMIUM and NODE_PATH (where playwright-core is installed).
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { withBrowser } = require("./browser.js");

const ECHO_URL = process.env.ECHO_URL;
const VARIANT = process.env.ECHO_VARIANT || "default";
const SCHEDULE = path.join(__dirname, "../interop/schedule.js");
const WAIT_MS = 60000;

// Runs in the page: the schedule over one socket, then one more socket per close code.
async function inPage({ url, waitMs }) {
  const { CLOSE_CODES, messages, bytesOf } = interopSchedule;
  const equal = (a, b) => a.length === b.length && a.every((byte, i) => byte === b[i]);

  // Opens a socket, runs `script(ws, fail)`, and resolves with the close event once the
  // socket closed; fails if that takes longer than `waitMs`.
  function connection(script) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      const timer = setTimeout(() => fail("took too long"), waitMs);
      let failed = false;
      function fail(reason) {
        if (failed) return;
        failed = true;
        clearTimeout(timer);
        ws.close();
        reject(new Error(reason));
      }
      // An error event tells nothing; the close event after it has the code and reason.
      ws.onerror = () => {};
      ws.onopen = () => script(ws, fail);
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!failed) resolve({ code: event.code, clean: event.wasClean, reason: event.reason, extensions: ws.extensions });
      };
    });
  }

  const expected = messages();
  let total = 0;
  const started = Date.now();
  // The CLOSE_CODES a page may send: 1001 is the server's to send, not a script's.
  const codes = CLOSE_CODES.filter((code) => code === 1000 || code >= 3000);
  let next = 0;
  const exchange = await connection((ws, fail) => {
    ws.onmessage = (event) => {
      const want = expected[next];
      const wantText = typeof want === "string";
      const same = wantText
        ? event.data === want
        : event.data instanceof ArrayBuffer && equal(new Uint8Array(event.data), want);
      if (!same) {
        const kind = typeof event.data === "string" ? "text" : "binary";
        fail(`message ${next}: sent ${wantText ? "text" : "binary"} of ${bytesOf(want).length} bytes, got ${kind} back`);
        return;
      }
      total += bytesOf(want).length;
      next += 1;
      if (next === expected.length) {
        // Idle for a second, ten ping intervals: the server closes a peer that does not
        // answer its pings, so the socket is still open after it only if the browser did.
        // (A socket the server closed resolves with the server's code, which the caller
        // compares with the one meant.)
        setTimeout(() => ws.readyState === WebSocket.OPEN && ws.close(codes[0]), 1000);
      }
    };
    for (const message of expected) ws.send(message);
  });
  const closes = [exchange];
  for (const code of codes.slice(1)) {
    closes.push(
      await connection((ws, fail) => {
        ws.onmessage = (event) => (event.data === "bye" ? ws.close(code) : fail(`got ${event.data}`));
        ws.send("bye");
      }),
    );
  }
  return { codes, closes, messages: expected.length, received: next, total, ms: Date.now() - started };
}

async function main() {
  assert.ok(ECHO_URL, "ECHO_URL must be set (cargo xtask browser-test sets it)");
  // The page below is answered by playwright, not by a loopback server, so Chromium counts it
  // as public and would block its socket to 127.0.0.1 (local network access checks).
  await withBrowser("echo", ["--disable-features=LocalNetworkAccessChecks"], async (context) => {
    const page = await context.newPage();
    // The page's origin must be the server's: its default origin check refuses others, as
    // gorilla's does. The echo serves no page, so playwright answers for it.
    const home = new URL("/", ECHO_URL.replace(/^ws/, "http")).href;
    await page.route(home, (route) =>
      route.fulfill({ contentType: "text/html", body: "<!doctype html><title>echo test</title>" }),
    );
    await page.goto(home);
    await page.addScriptTag({ content: fs.readFileSync(SCHEDULE, "utf8") });
    const result = await page.evaluate(inPage, { url: ECHO_URL, waitMs: WAIT_MS });
    assert.equal(result.received, result.messages, `not every message came back: ${JSON.stringify(result.closes[0])}`);
    result.closes.forEach(({ code, clean, reason }, i) => {
      assert.equal(code, result.codes[i], `connection ${i} closed with ${code} (${reason}), not ${result.codes[i]}`);
      assert.ok(clean, `connection ${i} (close ${code}) did not close cleanly`);
    });
    const { extensions } = result.closes[0];
    if (VARIANT === "off") {
      assert.equal(extensions, "", `WS_COMPRESSION=off, yet ws.extensions is ${extensions}`);
    } else {
      assert.match(extensions, /^permessage-deflate/, `ws.extensions is ${JSON.stringify(extensions)}`);
      const resets = /server_no_context_takeover/.test(extensions) && /client_no_context_takeover/.test(extensions);
      const takeover = !/no_context_takeover/.test(extensions);
      assert.ok(VARIANT === "takeover" ? takeover : resets, `${VARIANT}: ws.extensions is ${extensions}`);
    }
    console.log(
      `ok: echo (${VARIANT}, extensions: ${extensions || "none"}): ${result.messages} messages ` +
        `(${(result.total / (1 << 20)).toFixed(1)} MiB) in order, pings answered while idle, ` +
        `closes ${result.codes.join(" ")} answered in kind, ${result.ms} ms`,
    );
  });
}

main().then(
  () => console.log("browser echo test passed"),
  (error) => {
    console.error(`browser echo test failed: ${error.stack || error}`);
    process.exit(1);
  },
);
