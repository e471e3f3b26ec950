// Command ferretdb is the MongoDB-wire server the broker's tests talk to:
// FerretDB v1 embedded with its SQLite backend, so no MongoDB package is
// needed. It lives in its own module to keep FerretDB's dependencies out of
// the broker's go.mod.
//
//	ferretdb -dir /tmp/data -listen 127.0.0.1:0 -uri-file /tmp/data/uri
//
// It writes the mongodb:// URI it serves on to -uri-file once it listens,
// and runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	dir := flag.String("dir", "", "directory for the SQLite files (created if missing)")
	listen := flag.String("listen", "127.0.0.1:0", "TCP address to listen on; port 0 picks a free one")
	uriFile := flag.String("uri-file", "", "file to write the mongodb:// URI to once listening")
	flag.Parse()
	if err := run(*dir, *listen, *uriFile); err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}

func run(dir, listen, uriFile string) error {
	if dir == "" {
		return fmt.Errorf("-dir is required")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/",
	})
	if err != nil {
		return err
	}
	uri := f.MongoDBURI()
	if uriFile != "" {
		// Written whole then renamed, so a reader polling for it never sees half.
		tmp := uriFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(uri+"\n"), 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, uriFile); err != nil {
			return err
		}
	}
	fmt.Println(uri)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return f.Run(ctx)
}
