package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/cluster"
	"github.com/hpfeeds-go/hpfeeds/retain"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// retainOptions are the --retain* flags (docs/retention.md).
type retainOptions struct {
	patterns    []string
	maxAge      time.Duration
	maxBytes    int64
	dir         string
	replicas    int
	replayFirst time.Duration
	replayRate  int64
	maxPublish  *int // --max-publish-size: the largest body a stored frame holds
}

// addFlags adds the --retain flags; maxPublish is the broker's
// --max-publish-size.
func (r *retainOptions) addFlags(f *pflag.FlagSet, maxPublish *int) {
	r.maxPublish = maxPublish
	f.StringSliceVar(&r.patterns, "retain", nil, "keep the history of channels matching `GLOBS` (e.g. dionaea.*,cowrie.sessions) and replay what a subscriber's ident missed when it subscribes again (off unless given)")
	f.DurationVar(&r.maxAge, "retain-max-age", retain.DefaultMaxAge, "drop retained messages older than this `DURATION`")
	r.maxBytes = retain.DefaultMaxBytes
	f.Var(byteSize{&r.maxBytes}, "retain-max-bytes", "keep at most this much retained history, e.g. 10GiB; the oldest goes first")
	f.StringVar(&r.dir, "retain-dir", "retained", "`DIR` of the retained store (without --cluster)")
	f.IntVar(&r.replicas, "retain-replicas", 1, "copies of the retained store on the --cluster's JetStream servers")
	f.DurationVar(&r.replayFirst, "retain-replay-first", 0, "an ident subscribing to a retained channel for the first time starts this `DURATION` back (0: live)")
	r.replayRate = retain.DefaultReplayRate
	f.Var(byteSize{&r.replayRate}, "retain-replay-rate", "replay at most this many bytes a second to catching-up subscribers, all together, so live delivery keeps its share of the CPU (0: no bound)")
}

// engineOptions are the engine's options for the flags; conn is the
// cluster's NATS connection, nil for the embedded store.
func (r *retainOptions) engineOptions(log *slog.Logger, clusterPrefix string, br *cluster.Bridge) retain.Options {
	prefix, stream := "hpfeeds.retain", "HPFEEDS_RETAIN"
	opts := retain.Options{Patterns: r.patterns, MaxAge: r.maxAge, MaxBytes: r.maxBytes, Dir: r.dir,
		Replicas: r.replicas, ReplayFirst: r.replayFirst, ReplayRate: r.replayRate, MaxFrame: r.maxFrame(), Logger: log}
	if r.replayRate == 0 {
		opts.ReplayRate = -1 // the flag's 0 is no bound; the option's is the default
	}
	if br != nil {
		prefix = clusterPrefix + ".retain"
		stream = strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(clusterPrefix)) + "_RETAIN"
		opts.Conn = br.Conn()
	}
	opts.Stream, opts.Wildcard = stream, prefix+".*"
	opts.Subject = func(channel string) string { return cluster.Subject(prefix, channel) }
	return opts
}

// open starts the retained store if --retain is given.
func (r *retainOptions) open(log *slog.Logger, clusterPrefix string, br *cluster.Bridge) (*retain.Engine, error) {
	if len(r.patterns) == 0 {
		return nil, nil
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	e, err := retain.Open(r.engineOptions(log, clusterPrefix, br))
	if err != nil {
		if br != nil {
			return nil, fmt.Errorf("--retain with --cluster (--retain-replicas=%d): %w", r.replicas, err)
		}
		return nil, fmt.Errorf("--retain-dir=%s: %w", r.dir, err)
	}
	if br != nil {
		r.warnClusterPayload(log, br)
	}
	log.Info("retaining channels", "patterns", strings.Join(r.patterns, ","), "max_age", r.maxAge, "max_bytes", r.maxBytes)
	return e, nil
}

// maxFrame is the largest PUBLISH frame the broker takes.
func (r *retainOptions) maxFrame() int { return wire.HeaderLen + *r.maxPublish }

// warnClusterPayload warns when the cluster NATS's max_payload is below
// the largest batch the retained store may be handed: a message near
// --max-publish-size that does not compress would be delivered but not
// retained.
func (r *retainOptions) warnClusterPayload(log *slog.Logger, br *cluster.Bridge) {
	need := retain.StoredMax(retain.DefaultBatchBytes, r.maxFrame())
	if mp := br.Conn().MaxPayload(); mp < int64(need) {
		log.Warn("retain: the cluster NATS's max_payload is below the largest batch the retained store may be handed: messages near --max-publish-size that do not compress are delivered but not retained (raise max_payload in the NATS configuration, docs/retention.md)",
			"max_payload", mp, "needed", need)
	}
}

// check is what --check-config says about the retain flags.
func (r *retainOptions) check() error {
	if err := retain.CheckPatterns(r.patterns); err != nil {
		return fmt.Errorf("--retain: %w", err)
	}
	switch {
	case r.maxAge <= 0:
		return errors.New("--retain-max-age must be more than 0")
	case r.maxBytes < 1<<20:
		return errors.New("--retain-max-bytes must be at least 1MiB")
	case r.replicas < 1 || r.replicas > 5:
		return errors.New("--retain-replicas must be 1 to 5 (JetStream's limit)")
	case r.replayFirst < 0:
		return errors.New("--retain-replay-first must be 0 or more")
	}
	return nil
}

// newRetainedCmd is `hpfeeds-broker retained export`.
func newRetainedCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "retained", Short: "Read retained channels (see --retain)"}
	maxPublish := broker.DefaultMaxPublishSize
	r := retainOptions{maxPublish: &maxPublish}
	var clusterURL, prefix, channel string
	var since time.Duration
	export := &cobra.Command{
		Use:   "export",
		Short: "Write a retained channel's messages as JSON lines, oldest first",
		Long: `Write a retained channel's messages as JSON lines on stdout, oldest first:
{"time":…,"seq":…,"ident":…,"channel":…,"payload":…} (payload_base64 when not UTF-8).
Without --cluster it opens --retain-dir, which a running broker holds: stop it first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return r.export(cmd.Context(), clusterURL, prefix, channel, since)
		},
	}
	f := export.Flags()
	f.StringVar(&channel, "channel", "", "the `CHANNEL` to export (required)")
	f.DurationVar(&since, "since", time.Hour, "export messages stored in the last `DURATION`")
	f.StringVar(&r.dir, "retain-dir", "retained", "`DIR` of the retained store")
	f.StringVar(&clusterURL, "cluster", "", "read the stream on this NATS (`URL`) instead of --retain-dir")
	f.StringVar(&prefix, "cluster-prefix", "hpfeeds", "the brokers' NATS subject `PREFIX`")
	f.IntVar(&maxPublish, "max-publish-size", maxPublish, "the brokers' --max-publish-size (`BYTES`): a stored batch claiming more is skipped as damaged")
	export.MarkFlagRequired("channel")
	cmd.AddCommand(export)
	return cmd
}

func (r *retainOptions) export(ctx context.Context, url, prefix, channel string, since time.Duration) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r.patterns, r.maxAge, r.maxBytes, r.replicas = []string{channel}, retain.DefaultMaxAge, retain.DefaultMaxBytes, 1
	var br *cluster.Bridge
	if url != "" {
		var err error
		if br, err = cluster.New(cluster.Options{URLs: url, Prefix: prefix, MustConnect: true, Logger: log}); err != nil {
			return fmt.Errorf("--cluster=%s: %w", cluster.Redact(url), err)
		}
		defer br.Close()
	}
	e, err := retain.OpenExisting(r.engineOptions(log, prefix, br))
	if err != nil {
		return fmt.Errorf("--retain-dir=%s: %w", r.dir, err)
	}
	defer e.Close()
	enc := json.NewEncoder(os.Stdout)
	return e.Export(ctx, channel, time.Now().Add(-since), func(s retain.Stored, frame []byte) error {
		f, err := wire.Decode(wire.OpPublish, frame)
		if err != nil {
			return nil
		}
		line := map[string]any{"time": s.Time.UTC().Format(time.RFC3339Nano), "seq": s.Pos.Seq,
			"ident": string(f.Ident), "channel": string(f.Channel)}
		if utf8.Valid(f.Payload) {
			line["payload"] = string(f.Payload)
		} else {
			line["payload_base64"] = f.Payload
		}
		return enc.Encode(line)
	})
}

// checkConfig is --check-config's part for --retain: the flags, and the
// directory, without creating it.
func (r *retainOptions) checkConfig(ctx context.Context, log *slog.Logger, br *cluster.Bridge) (string, error) {
	if len(r.patterns) == 0 {
		return "", nil
	}
	if err := r.check(); err != nil {
		return "", err
	}
	if br != nil {
		js, err := jetstream.New(br.Conn())
		if err == nil {
			_, err = js.AccountInfo(ctx)
		}
		if err != nil {
			return "", fmt.Errorf("--retain with --cluster: no JetStream on the cluster's NATS for this user: %w (enable jetstream in the NATS configuration, and allow the user to publish to $JS.API.> and $KV.PREFIX_RETAIN_POS.>: docs/retention.md)", err)
		}
		r.warnClusterPayload(log, br)
		return ", retained: " + strings.Join(r.patterns, ",") + " on the cluster's JetStream", nil
	}
	dir := r.dir
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		dir = filepath.Dir(dir) // created at start-up: its parent must take it
	} else if err := retain.CheckExisting(dir); err != nil {
		return "", fmt.Errorf("--retain-dir: %w", err)
	}
	probe, err := os.CreateTemp(dir, ".hpfeeds-check-*") // removed at once
	if err != nil {
		return "", fmt.Errorf("--retain-dir %s: %s is not writable: %w", r.dir, dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	return ", retained: " + strings.Join(r.patterns, ",") + " in " + r.dir, nil
}

// joinClusterAndRetain joins the --cluster and opens the retained store,
// setting cfg's Bridge and Retain; closeAll closes both, the store first,
// once the broker's shutdown has saved the positions.
func (o *options) joinClusterAndRetain(log *slog.Logger, cfg *broker.Config) (bridge *cluster.Bridge, closeAll func(), err error) {
	if bridge, err = o.joinCluster(log, *cfg, false); err != nil {
		return nil, nil, err
	}
	if bridge != nil {
		cfg.Bridge = bridge
	}
	if cfg.Retain, err = o.retain.open(log, o.cluster.Prefix, bridge); err != nil {
		if bridge != nil {
			bridge.Close()
		}
		return nil, nil, err
	}
	return bridge, func() {
		if cfg.Retain != nil {
			cfg.Retain.Close()
		}
		if bridge != nil {
			bridge.Close()
		}
	}, nil
}
