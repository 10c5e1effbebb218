// The chat example in a real browser (headless Chromium through playwright-core): two pages in
// one room and one in another; what the first types shows on the second and not on the third,
// the browser negotiated permessage-deflate, and compressed messages of 1 to 2,000 characters
// (multi-byte UTF-8 among them) come back unchanged and in order.
//
// Run by `cargo xtask browser-test`, which starts the chat and sets CHAT_URL (http://addr/),
// CHROMIUM (the browser binary) and NODE_PATH (where playwright-core is installed).
"use strict";

const assert = require("node:assert/strict");
const { withBrowser } = require("./browser.js");

const CHAT_URL = process.env.CHAT_URL;
const WAIT_MS = 15000;

// Opens the chat page already joined to `room` as `name` (the page joins from its #fragment),
// and waits until its socket is open.
async function joined(context, room, name, handshakes) {
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketHandshakeResponseReceived", (event) => {
    handshakes.push({ name, status: event.response.status, headers: event.response.headers });
  });
  await page.goto(`${CHAT_URL}#room=${room}&name=${name}`);
  await page.locator("#log", { hasText: `joined ${room}` }).waitFor({ timeout: WAIT_MS });
  await page.waitForFunction(() => socket && socket.readyState === WebSocket.OPEN, null, {
    timeout: WAIT_MS,
  });
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// Resolves once `page` shows a chat line containing `text`.
function shows(page, text) {
  return page.locator("#log p", { hasText: text }).first().waitFor({ timeout: WAIT_MS });
}

async function main() {
  assert.ok(CHAT_URL, "CHAT_URL must be set (cargo xtask browser-test sets it)");
  await withBrowser("chat", ["--disable-quic"], async (context) => {
    const handshakes = [];
    const ann = await joined(context, "red", "ann", handshakes);
    const bob = await joined(context, "red", "bob", handshakes);
    const cid = await joined(context, "blue", "cid", handshakes);

    // Ann types; Bob, in her room, shows it.
    const hello = `hello from ann ${Date.now()}`;
    await say(ann, hello);
    await shows(bob, hello);
    await shows(ann, hello);
    console.log(`ok: bob (room red) shows ann's message`);

    // Cid, in another room, must not. His own message, sent after ann's reached the others,
    // comes back to him through the same connection: once it shows, anything of ann's routed
    // to him would be there already.
    const marker = `cid is here ${Date.now()}`;
    await say(cid, marker);
    await shows(cid, marker);
    const cidLog = await cid.locator("#log").innerText();
    assert.ok(!cidLog.includes(hello), `cid (room blue) shows ann's message:\n${cidLog}`);
    const bobLog = await bob.locator("#log").innerText();
    assert.ok(!bobLog.includes(marker), `bob (room red) shows cid's message:\n${bobLog}`);
    console.log("ok: cid (room blue) does not show it, and bob does not show cid's");

    // Who is online: ann's page learned of bob from his presence line, bob's page of ann from
    // `/who` at join; cid's room has only him.
    for (const page of [ann, bob]) {
      await page.locator("#online", { hasText: "online: ann, bob" }).waitFor({ timeout: WAIT_MS });
    }
    await cid.locator("#online", { hasText: "online: cid" }).waitFor({ timeout: WAIT_MS });
    console.log("ok: the pages show who is online");

    // permessage-deflate: the page's socket reports it, and the 101 said so.
    for (const page of [ann, bob, cid]) {
      const extensions = await page.evaluate(() => socket.extensions);
      assert.match(extensions, /^permessage-deflate/, `ws.extensions is ${JSON.stringify(extensions)}`);
    }
    assert.equal(handshakes.length, 3, `handshakes seen: ${JSON.stringify(handshakes)}`);
    for (const { name, status, headers } of handshakes) {
      assert.equal(status, 101, `${name}'s handshake status`);
      const header = Object.entries(headers).find(([k]) => k.toLowerCase() === "sec-websocket-extensions");
      assert.ok(header, `${name}'s 101 has no Sec-WebSocket-Extensions: ${JSON.stringify(headers)}`);
      assert.match(header[1], /permessage-deflate/);
    }
    console.log("ok: every page negotiated permessage-deflate (ws.extensions and the 101's header)");

    // Compressed messages of a few sizes round-trip: a second socket of Ann's page, alone in a
    // room, sends texts of 1 to 2,000 characters (the chat's limit; multi-byte UTF-8 among
    // them) and gets each back, in order, as the room's chat line.
    const sizes = [1, 31, 32, 125, 126, 1000, 2000];
    const trip = await ann.evaluate(
      async ({ sizes, waitMs }) => {
        const alphabet = Array.from("abcxyz é ü € ✓ 日本 😀 𝄞");
        // The chat trims a message: no space at either end.
        const texts = sizes.map((n, i) =>
          Array.from({ length: n }, (_, j) =>
            j === 0 || j === n - 1 ? "x" : alphabet[(i * 7 + j * 13) % alphabet.length],
          ).join(""),
        );
        const url = `${location.origin.replace(/^http/, "ws")}/ws/sizes-${Date.now()}?name=sizes`;
        const probe = new WebSocket(url);
        await new Promise((resolve, reject) => {
          probe.onopen = resolve;
          probe.onerror = () => reject(new Error(`cannot open ${url}`));
        });
        const got = [];
        const all = new Promise((resolve, reject) => {
          const timer = setTimeout(
            () => reject(new Error(`${got.length} of ${texts.length} messages came back`)),
            waitMs,
          );
          probe.onmessage = (m) => {
            const line = JSON.parse(m.data);
            // The server's join line (the room's position) and presence lines are not chat
            // lines.
            if (line.joined || line.presence) return;
            got.push(line.text);
            if (got.length === texts.length) {
              clearTimeout(timer);
              resolve();
            }
          };
        });
        for (const text of texts) probe.send(text);
        await all;
        const extensions = probe.extensions;
        probe.close(1000);
        return { texts, got, extensions };
      },
      { sizes, waitMs: WAIT_MS },
    );
    assert.match(trip.extensions, /^permessage-deflate/, `probe's ws.extensions is ${trip.extensions}`);
    assert.deepEqual(trip.got, trip.texts, "messages came back changed or out of order");
    console.log(`ok: compressed messages of ${sizes.join(", ")} characters round-trip`);
  });
}

main().then(
  () => console.log("browser test passed"),
  (error) => {
    console.error(`browser test failed: ${error.stack || error}`);
    process.exit(1);
  },
);
