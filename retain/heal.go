package retain

import (
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// After a write error (a full disk, say) JetStream stores nothing more in
// the stream until it restarts, even once the cause is gone, and on some
// errors it turns itself off. In embedded mode the engine restarts it in
// place, as nats-server's own configuration reload does: once the store
// has refused batches and acknowledged none for healAfter (doubling after
// each restart, up to healMaxWait), and the store's disk has healFree
// bytes free. The stream and the positions are recovered from the files;
// catch-ups and resumes wait for the restart (Engine.heal) rather than
// fail.
const (
	healCheck   = 5 * time.Second
	healAfter   = 10 * time.Second
	healMaxWait = 5 * time.Minute
	healFree    = 8 << 20 // one block of JetStream's file store
)

// healLoop watches the embedded store until quit is closed.
func (e *Engine) healLoop(quit <-chan struct{}) {
	defer close(e.healDone)
	tick := time.NewTicker(healCheck)
	defer tick.Stop()
	h := healer{failed: e.Failed.Load(), acked: e.acked.Load(), wait: healAfter}
	free := func() (uint64, bool) { return freeBytes(e.opts.Dir) }
	for {
		var now time.Time
		select {
		case <-quit:
			return
		case now = <-tick.C:
		}
		since := h.since
		switch h.check(now, e.Failed.Load(), e.acked.Load(), free) {
		case healDiskFull:
			e.opts.Logger.Warn("retain: the store's disk is full; the embedded JetStream restarts once it has room",
				"dir", e.opts.Dir, "needs_bytes", healFree)
		case healRestart:
			e.restartJetStream(since)
		}
	}
}

// healer decides, from the store's counts of refused and acknowledged
// batches at each check, when to restart it.
type healer struct {
	failed, acked uint64    // at the last check
	since         time.Time // when the store was first seen failing; zero: it is not
	wait          time.Duration
	diskFull      bool // said so
}

type healAction int

const (
	healNothing  healAction = iota
	healDiskFull            // due, but the disk has no room: say so once
	healRestart
)

// check takes the counts at now; free is the store's disk's free bytes
// (ok false: unknown), asked only when a restart is due.
func (h *healer) check(now time.Time, failed, acked uint64, free func() (uint64, bool)) healAction {
	switch {
	case acked != h.acked: // storing: whatever failed was passing
		h.since, h.wait, h.diskFull = time.Time{}, healAfter, false
	case failed != h.failed && h.since.IsZero():
		h.since = now
	}
	h.failed, h.acked = failed, acked
	if h.since.IsZero() || now.Sub(h.since) < h.wait {
		return healNothing
	}
	if n, ok := free(); ok && n < healFree {
		if h.diskFull {
			return healNothing
		}
		h.diskFull = true
		return healDiskFull
	}
	h.since, h.wait, h.diskFull = time.Time{}, min(2*h.wait, healMaxWait), false
	return healRestart
}

// jetStreamConfig is the embedded JetStream's configuration, as
// startEmbedded's server options give it, to start it again.
func (e *Engine) jetStreamConfig() *server.JetStreamConfig {
	return &server.JetStreamConfig{StoreDir: e.opts.Dir, MaxMemory: jsMemory, MaxStore: jsStore, Strict: true, CompressOK: true}
}

// restartJetStream stops the embedded JetStream and starts it again on
// the same files.
func (e *Engine) restartJetStream(failingSince time.Time) {
	e.heal.Lock()
	defer e.heal.Unlock()
	e.opts.Logger.Warn("retain: restarting the embedded JetStream, which has refused every batch since a write error",
		"failing_since", failingSince.Format(time.RFC3339), "failed_batches", e.Failed.Load())
	if err := e.srv.ShutdownJetStream(); err != nil {
		e.opts.Logger.Warn("retain: stopping the embedded JetStream", "err", err)
	}
	if err := e.srv.EnableJetStream(e.jetStreamConfig()); err != nil {
		e.opts.Logger.Error("retain: the embedded JetStream did not restart; live delivery goes on, nothing is retained; the next try is later",
			"err", err)
		return
	}
	e.Restarts.Add(1)
	e.opts.Logger.Info("retain: the embedded JetStream restarted", "dir", e.opts.Dir)
}
