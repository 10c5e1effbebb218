// gorilla/websocket echo, an optional peer in `cargo xtask bench`: the library GoFr uses.
// Built offline in GOPATH mode against Debian's golang-github-gorilla-websocket-dev.
// Prints `listening on ADDR` once bound to a port the OS picks. DEFLATE=1 sets
// EnableCompression, as GoFr's WithCompression() does, for S5d.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	CheckOrigin:       func(*http.Request) bool { return true },
	EnableCompression: os.Getenv("DEFLATE") == "1",
}

func echo(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	for {
		kind, message, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if err := conn.WriteMessage(kind, message); err != nil {
			return
		}
	}
}

func main() {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	http.HandleFunc("/ws", echo)
	panic(http.Serve(listener, nil))
}
