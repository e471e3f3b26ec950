package retain

import (
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// After a write error (a full disk, a directory made read-only) JetStream
// stores nothing more in the stream until it restarts, even once the
// cause is gone, and on some errors it turns itself off. In embedded mode
// the engine restarts it in place, as nats-server's own configuration
// reload does: once the store has refused batches and acknowledged none
// for healAfter (doubling after each restart, up to healMaxWait), and the
// store's disk has healFree bytes free. The stream and the positions are
// recovered from the files; catch-ups and resumes wait for the restart
// (Engine.heal) rather than fail.
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
	var (
		failed, acked = e.Failed.Load(), e.acked.Load()
		since         time.Time // when the store was first seen failing
		wait          = healAfter
		lowDisk       bool // said so
	)
	for {
		var now time.Time
		select {
		case <-quit:
			return
		case now = <-tick.C:
		}
		f, a := e.Failed.Load(), e.acked.Load()
		switch {
		case a != acked: // storing: whatever failed was passing
			since, wait, lowDisk = time.Time{}, healAfter, false
		case f != failed && since.IsZero():
			since = now
		}
		failed, acked = f, a
		if since.IsZero() || now.Sub(since) < wait {
			continue
		}
		if free, ok := freeBytes(e.opts.Dir); ok && free < healFree {
			if !lowDisk {
				e.opts.Logger.Warn("retain: the store's disk is full; the embedded JetStream restarts once it has room",
					"dir", e.opts.Dir, "free_bytes", free, "needs_bytes", healFree)
				lowDisk = true
			}
			continue
		}
		e.restartJetStream(since)
		since, wait, lowDisk = time.Time{}, min(2*wait, healMaxWait), false
	}
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
	err := e.srv.EnableJetStream(&server.JetStreamConfig{
		StoreDir:   e.opts.Dir,
		MaxMemory:  jsMemory,
		MaxStore:   jsStore,
		Strict:     true,
		CompressOK: true,
	})
	if err != nil {
		e.opts.Logger.Error("retain: the embedded JetStream did not restart; live delivery goes on, nothing is retained; the next try is later",
			"err", err)
		return
	}
	e.Restarts.Add(1)
	e.opts.Logger.Info("retain: the embedded JetStream restarted", "dir", e.opts.Dir)
}
