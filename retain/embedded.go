package retain

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
	lock, err := lockDir(e.opts.Dir)
	if err != nil {
		return err
	}
	defer func() {
		if e.srv == nil {
			lock.Close() // not started
		}
	}()
	srv, err := server.NewServer(&server.Options{
		ServerName:         "hpfeeds-retain",
		JetStream:          true,
		StoreDir:           e.opts.Dir,
		JetStreamMaxMemory: jsMemory,
		JetStreamMaxStore:  jsStore,
		MaxPayload:         int32(min(StoredMax(e.opts.BatchBytes, e.opts.MaxFrame), maxStoredMsg)),
		DontListen:         true,
		NoSigs:             true,
	})
	if err != nil {
		return fmt.Errorf("retain: embedded JetStream: %w", err)
	}
	jl := newJSLog(e.opts.Logger)
	srv.SetLogger(jl, false, false)
	go srv.Start()
	ready := make(chan bool, 1)
	go func() { ready <- srv.ReadyForConnections(30 * time.Second) }()
	select {
	case ok := <-ready:
		if !ok {
			srv.Shutdown()
			return fmt.Errorf("retain: the embedded JetStream did not start on %s within 30 s (a corrupt store? move it aside)", e.opts.Dir)
		}
	case msg := <-jl.fatal:
		srv.Shutdown()
		return fmt.Errorf("retain: the embedded JetStream cannot use %s: %s (a corrupt or foreign store? move it aside)", e.opts.Dir, msg)
	}
	jl.starting.Store(false)
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return fmt.Errorf("retain: JetStream could not open %s (a corrupt or foreign store? move it aside)", e.opts.Dir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Name("hpfeeds-retain"))
	if err != nil {
		srv.Shutdown()
		return fmt.Errorf("retain: connecting to the embedded JetStream: %w", err)
	}
	e.srv, e.nc, e.lock = srv, nc, lock
	return nil
}

// jsLog passes the embedded JetStream's warnings and errors to the
// broker's log: they are how a damaged store shows (a block it could not
// read, a stream it had to rebuild, a full disk). Its notices (its banner,
// each start-up step) are debug. A fatal error ends its start-up, and is
// the start-up error rather than a log line. At most jsLogBurst lines are
// written per jsLogWindow, as JetStream logs each batch a full disk refuses.
type jsLog struct {
	log      *slog.Logger
	starting atomic.Bool // Fatalf goes to fatal, not to the log
	fatal    chan string

	mu         sync.Mutex
	window     time.Time // when the current window began
	lines      int       // written in it
	suppressed int       // not written since the last line
}

const (
	jsLogWindow = 10 * time.Second
	jsLogBurst  = 10
)

func newJSLog(log *slog.Logger) *jsLog {
	l := &jsLog{log: log, fatal: make(chan string, 1)}
	l.starting.Store(true)
	return l
}

func (l *jsLog) Noticef(format string, v ...any) {
	l.log.Debug("retain: embedded JetStream", "detail", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (l *jsLog) Warnf(format string, v ...any) { l.write(slog.LevelWarn, format, v) }

func (l *jsLog) Errorf(format string, v ...any) { l.write(slog.LevelError, format, v) }

func (l *jsLog) Fatalf(format string, v ...any) {
	if l.starting.Load() {
		select {
		case l.fatal <- strings.TrimSpace(fmt.Sprintf(format, v...)):
			return
		default:
		}
	}
	l.write(slog.LevelError, format, v)
}

func (l *jsLog) Debugf(string, ...any) {}

func (l *jsLog) Tracef(string, ...any) {}

func (l *jsLog) write(level slog.Level, format string, v []any) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.window) >= jsLogWindow {
		l.window, l.lines = now, 0
	}
	if l.lines >= jsLogBurst {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.lines++
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	args := []any{"detail", strings.TrimSpace(fmt.Sprintf(format, v...))}
	if suppressed > 0 {
		args = append(args, "suppressed_before", suppressed)
	}
	l.log.Log(context.Background(), level, "retain: embedded JetStream", args...)
}
