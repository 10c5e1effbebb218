// The interop schedule in JavaScript, shared by the Node.js `ws` client (interop.js) and the
// browser test (tests/browser/echo.test.js, which injects this file into a page): 1,000
// messages of mixed sizes (0, 1, 125, 126, 127, 128 B, 64 KiB and 1 byte either side, 1 MiB,
// the rest up to 2 KiB), text with multi-byte UTF-8 (a string) and binary (a Uint8Array), from
// a fixed seed; ping payloads; close codes. The same shape as interop.py and the
// tokio-tungstenite client in examples/tests/interop.rs (each language its own generator).
// Plain ECMAScript (TextEncoder, Uint8Array): it runs in Node.js and in a browser alike.
"use strict";

// eslint-disable-next-line no-unused-vars
const interopSchedule = (() => {
  const MESSAGES = 1000;
  const SEED = 13;
  // Every 50th message has one of these sizes, in turn (each twice); the rest 0-2048 bytes.
  const SPECIAL_SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 1 << 20];
  // After every 100th message, a ping; payload sizes in turn (125 is the largest allowed).
  const PING_SIZES = [0, 1, 4, 16, 64, 100, 124, 125, 125, 8];
  // Text is drawn from 1-, 2-, 3- and 4-byte UTF-8 characters.
  const ALPHABET = Array.from("abcdefghij klmnopqrstuvwxyz 0123456789 é ü ß € ✓ 日本語 😀 𝄞");
  const CLOSE_CODES = [1000, 1001, 4000];
  const utf8 = new TextEncoder();

  // mulberry32: a small seeded generator, numbers in [0, 1).
  function generator(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // A string whose UTF-8 encoding is exactly `size` bytes.
  function textOf(random, size) {
    const parts = [];
    let bytes = 0;
    for (;;) {
      const c = ALPHABET[Math.floor(random() * ALPHABET.length)];
      const len = utf8.encode(c).length;
      if (bytes + len > size) break;
      parts.push(c);
      bytes += len;
    }
    return parts.join("") + "x".repeat(size - bytes);
  }

  function binaryOf(random, size) {
    const out = new Uint8Array(size);
    for (let i = 0; i < size; i++) out[i] = Math.floor(random() * 256);
    return out;
  }

  // The 1,000 messages: strings are text, Uint8Arrays binary.
  function messages() {
    const random = generator(SEED);
    const out = [];
    for (let i = 0; i < MESSAGES; i++) {
      const size =
        i % 50 === 0
          ? SPECIAL_SIZES[(i / 50) % SPECIAL_SIZES.length]
          : Math.floor(random() * 2049);
      out.push(random() < 0.5 ? textOf(random, size) : binaryOf(random, size));
    }
    return out;
  }

  // The payload of the `k`-th ping.
  function pingPayload(k) {
    const out = new Uint8Array(PING_SIZES[k % PING_SIZES.length]);
    for (let j = 0; j < out.length; j++) out[j] = (k * 31 + j) % 256;
    return out;
  }

  // The bytes a message is on the wire (UTF-8 for text).
  function bytesOf(message) {
    return typeof message === "string" ? utf8.encode(message) : message;
  }

  return { CLOSE_CODES, messages, pingPayload, bytesOf };
})();

if (typeof module !== "undefined") module.exports = interopSchedule;
