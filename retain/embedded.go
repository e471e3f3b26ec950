package retain

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// CheckDir makes sure dir can hold the embedded store: it is created if
// missing, must be writable, and if it holds anything it must be a store
// this engine made (its marker file), not some other directory given by
// mistake.
func CheckDir(dir string) error {
	if dir == "" {
		return errors.New("no directory given for the retained store")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("retained store directory %s: %w", dir, err)
	}
	if err := CheckExisting(dir); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, marker), os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("retained store directory %s is not writable: %w", dir, err)
	}
	return f.Close()
}

// CheckExisting reports an existing dir that is not a retained store: it
// holds files but not the marker the engine leaves.
func CheckExisting(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("retained store directory %s: %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, marker)); errors.Is(err, fs.ErrNotExist) && len(entries) > 0 {
		return fmt.Errorf("retained store directory %s holds files but no %s marker: it is not a retained store; give an empty directory or the one the broker used before", dir, marker)
	}
	return nil
}

// startEmbedded runs JetStream in this process, without a listener, and
// connects to it in-process. The file store writes each acknowledged
// message to the OS before the acknowledgement (a kill -9 of the broker
// loses none of them); it syncs to disk every SyncInterval (JetStream's
// default, 2 minutes), so a power cut may lose up to that much.
func (e *Engine) startEmbedded() error {
	if err := CheckDir(e.opts.Dir); err != nil {
		return err
	}
	srv, err := server.NewServer(&server.Options{
		ServerName:         "hpfeeds-retain",
		JetStream:          true,
		StoreDir:           e.opts.Dir,
		JetStreamMaxMemory: jsMemory,
		JetStreamMaxStore:  e.opts.MaxBytes + kvReserve,
		DontListen:         true,
		NoSigs:             true,
		NoLog:              true,
	})
	if err != nil {
		return fmt.Errorf("retain: embedded JetStream: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("retain: the embedded JetStream did not start on %s (a corrupt store? move it aside)", e.opts.Dir)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return fmt.Errorf("retain: JetStream could not open %s (a corrupt or foreign store? move it aside)", e.opts.Dir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Name("hpfeeds-retain"))
	if err != nil {
		srv.Shutdown()
		return fmt.Errorf("retain: connecting to the embedded JetStream: %w", err)
	}
	e.srv, e.nc = srv, nc
	return nil
}
