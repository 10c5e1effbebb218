# The interop script for the Python `websockets` client (PyPI, pinned in requirements.txt).
#
# Checks, against a server that echoes every message (the `echo` example):
# - 1,000 messages of mixed sizes (0, 1, 125, 126, 127, 128 B, 64 KiB and 1 byte either side,
#   1 MiB, the rest up to 2 KiB), text with multi-byte UTF-8 and binary, generated from a fixed
#   seed, sent while the echoes are read, come back equal and in order;
# - 10 pings with payloads of 0 to 125 bytes are each answered by a pong with the same payload;
# - the message connection closes with 1000, and two more connections with 1001 and 4000: the
#   server's close frame carries the same code.
# The same schedule as interop.js and the tokio-tungstenite client in examples/tests/interop.rs.
#
# Usage: python interop.py URL [--deflate] [--no-context-takeover]
#   --deflate              offer permessage-deflate
#   --no-context-takeover  ask for server_no_context_takeover and client_no_context_takeover
# Prints one summary line, `interop: ...; extensions: <the server's Sec-WebSocket-Extensions>`,
# and exits 0; on any mismatch it says what differed on stderr and exits 1.
# Run by `cargo test -p examples --test interop`, which starts the server and judges the
# negotiated extensions.

import argparse
import asyncio
import random
import sys
import time

import websockets
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

MESSAGES = 1000
SEED = 13
# Every 50th message has one of these sizes, in turn (each twice); the rest 0-2048 bytes.
SPECIAL_SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 1 << 20]
# After every 100th message, a ping; payload sizes in turn (125 is the largest allowed).
PING_SIZES = [0, 1, 4, 16, 64, 100, 124, 125, 125, 8]
# Text is drawn from 1-, 2-, 3- and 4-byte UTF-8 characters.
ALPHABET = "abcdefghij klmnopqrstuvwxyz 0123456789 é ü ß € ✓ 日本語 😀 𝄞"
CLOSE_CODES = [1000, 1001, 4000]
# Longest wait for any one step.
WAIT = 20.0


class Mismatch(Exception):
    pass


def text_of(rng, size):
    """A string whose UTF-8 encoding is exactly `size` bytes."""
    chars = "".join(rng.choices(ALPHABET, k=size))
    text = chars.encode()[:size].decode("utf-8", "ignore")  # drop a cut character
    return text + "x" * (size - len(text.encode()))


def messages():
    rng = random.Random(SEED)
    out = []
    for i in range(MESSAGES):
        if i % 50 == 0:
            size = SPECIAL_SIZES[(i // 50) % len(SPECIAL_SIZES)]
        else:
            size = rng.randint(0, 2048)
        if rng.random() < 0.5:
            out.append(text_of(rng, size))
        else:
            out.append(rng.randbytes(size))
    return out


def ping_payload(k):
    return bytes((k * 31 + j) % 256 for j in range(PING_SIZES[k % len(PING_SIZES)]))


def describe(message):
    kind = "text" if isinstance(message, str) else "binary"
    size = len(message.encode()) if isinstance(message, str) else len(message)
    return f"{kind} of {size} bytes"


def client_options(args):
    # No keepalive pings of its own: every ping on the wire is one of ours.
    options = {
        "compression": None,
        "max_size": 4 << 20,
        "ping_interval": None,
        "open_timeout": WAIT,
        "close_timeout": WAIT,
    }
    if args.deflate:
        options["extensions"] = [
            ClientPerMessageDeflateFactory(
                server_no_context_takeover=args.no_context_takeover,
                client_no_context_takeover=args.no_context_takeover,
            )
        ]
    return options


async def close_with(ws, code):
    await asyncio.wait_for(ws.close(code=code, reason="interop"), WAIT)
    answer = ws.protocol.close_rcvd
    if answer is None or answer.code != code:
        got = "no close frame" if answer is None else f"code {answer.code}"
        raise Mismatch(f"closed with {code}, the server answered {got}")


async def exchange(args, expected):
    """The message connection: all messages and pings, then close 1000."""
    async with connect(args.url, **client_options(args)) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "none")
        pongs = []

        async def write():
            for i, message in enumerate(expected):
                await ws.send(message)
                if i % 100 == 99:
                    pongs.append(await ws.ping(ping_payload(i // 100)))

        writer = asyncio.create_task(write())
        try:
            for i, want in enumerate(expected):
                got = await asyncio.wait_for(ws.recv(), WAIT)
                if got != want:
                    raise Mismatch(f"message {i}: sent {describe(want)}, got back {describe(got)}")
        finally:
            await writer
        # websockets completes a ping's future only on a pong with the same payload.
        await asyncio.wait_for(asyncio.gather(*pongs), WAIT)
        await close_with(ws, CLOSE_CODES[0])
        return extensions, len(pongs)


async def close_only(args, code):
    """One short connection: one message echoed, then close with `code`."""
    async with connect(args.url, **client_options(args)) as ws:
        await ws.send("bye")
        got = await asyncio.wait_for(ws.recv(), WAIT)
        if got != "bye":
            raise Mismatch(f"close {code} connection: sent 'bye', got back {describe(got)}")
        await close_with(ws, code)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--no-context-takeover", action="store_true")
    args = parser.parse_args()
    variant = f"deflate={'on' if args.deflate else 'off'}"
    if args.deflate:
        variant += f" context-takeover={'off' if args.no_context_takeover else 'on'}"

    expected = messages()
    total = sum(len(m.encode()) if isinstance(m, str) else len(m) for m in expected)
    started = time.monotonic()
    try:
        extensions, pings = await exchange(args, expected)
        for code in CLOSE_CODES[1:]:
            await close_only(args, code)
    except (Mismatch, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
        what = str(e) or type(e).__name__
        print(f"interop: python websockets {websockets.__version__} {variant}: FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    ms = (time.monotonic() - started) * 1000
    print(
        f"interop: python websockets {websockets.__version__} {variant}: "
        f"{len(expected)} messages ({total / (1 << 20):.1f} MiB) echoed in order, "
        f"{pings} pongs, closes {' '.join(map(str, CLOSE_CODES))} answered in kind, "
        f"{ms:.0f} ms; extensions: {extensions}"
    )


if __name__ == "__main__":
    asyncio.run(main())
