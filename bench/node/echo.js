// Node.js `ws` echo, an optional peer in `cargo xtask bench` (`npm install` here first).
// Prints `listening on ADDR` once bound to a port the OS picks. DEFLATE=1 turns on
// permessage-deflate with ws's defaults (`perMessageDeflate: true`), for S5d.
'use strict';
const { WebSocketServer } = require('ws');

const server = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: process.env.DEFLATE === '1',
});
server.on('listening', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
});
