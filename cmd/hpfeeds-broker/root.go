package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/auth"
	_ "github.com/hpfeeds-go/hpfeeds/auth/env"
	_ "github.com/hpfeeds-go/hpfeeds/auth/jsonfile"
	"github.com/hpfeeds-go/hpfeeds/auth/mongostore"
	"github.com/hpfeeds-go/hpfeeds/auth/sqlstore"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/cluster"
	"github.com/hpfeeds-go/hpfeeds/internal/version"
	"github.com/hpfeeds-go/hpfeeds/metrics"
	"github.com/hpfeeds-go/hpfeeds/status"
)

// options are the command line's settings.
type options struct {
	endpoints        []string
	auths            []string
	exporter         string
	webConfig        string
	exporterMaxConns int
	sizeBuckets      bool
	bind             string
	tlsCert          string
	tlsKey           string
	debug            bool
	logFormat        string
	logLevel         string
	staleAfter       time.Duration
	checkConfig      bool
	mongoColl        string
	reloaders        []reloader // the stores SIGHUP re-reads
	opened           auth.Chain // the stores that answered at start, uninstrumented
	cfg              broker.Config
	cluster          cluster.Options
	retain           retainOptions // retain.go
}

func newRootCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "hpfeeds-broker",
		Short: "Run an hpfeeds broker",
		Long: `Run an hpfeeds broker: sensors publish to channels, every subscriber of a
channel gets a copy. Takes the Python hpfeeds-broker's command line.`,
		Example: `  hpfeeds-broker -e tcp:port=10000 --auth=env
  hpfeeds-broker -e tls:port=10000:cert=broker.crt:key=broker.key --auth=/etc/hpfeeds/users.json
  hpfeeds-broker -e tcp:port=10000 --auth=database+postgresql://hpfeeds@db/hpfeeds --exporter=0.0.0.0:9431`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	cmd.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	f := cmd.Flags()
	f.StringArrayVarP(&o.endpoints, "endpoint", "e", nil, "listen on `ENDPOINT`, e.g. tcp:port=10000 or tls:port=10000:cert=broker.crt:key=broker.key (repeatable; default tcp:port=10000)")
	f.StringArrayVar(&o.auths, "auth", nil, "credential store `SPEC`: env, a .json file, sqlite or a .db/.sqlite path, database+postgresql://…, database+mysql://…, database+sqlite:///…, mongodb://… (repeatable, asked in order; default sqlite.db in the working directory; a missing .db/.sqlite file is created at start)")
	f.StringVar(&o.exporter, "exporter", "", "serve Prometheus /metrics, /healthz, the status page / and /connz, /chanz, /identz on `HOST:PORT` (off unless given)")
	f.StringVar(&o.webConfig, "web-config-file", "", "serve --exporter with TLS and/or basic authentication as this `FILE` says (the Prometheus exporter-toolkit web configuration format)")
	f.IntVar(&o.exporterMaxConns, "exporter-max-connections", metrics.DefaultMaxConns, "connections the --exporter serves at once; past it a new one takes the slot of an idle one")
	f.BoolVar(&o.sizeBuckets, "publish-size-buckets", true, "export the buckets of hpfeeds_broker_receive_publish_size for each ident and channel (false: only its _sum, _count and +Inf bucket, 3 series a pair instead of 16; see docs/metrics.md)")
	f.DurationVar(&o.staleAfter, "stale-after", status.DefaultStaleAfter, "show a sensor as stale once it has published nothing for this `DURATION`")
	f.DurationVar(&o.cfg.RevalidateEvery, "revalidate-every", broker.DefaultRevalidateEvery, "look up each live session's user again this often: removed users and changed secrets are disconnected, changed channels enforced (`DURATION`; 0: never)")
	f.StringVar(&o.cfg.Name, "name", broker.DefaultName, "broker `NAME` sent to clients in INFO (at most 255 bytes)")
	f.BoolVar(&o.debug, "debug", false, "log at debug level (same as --log-level=debug)")
	f.StringVar(&o.logFormat, "log-format", "text", "log `FORMAT`: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	f.StringVar(&o.bind, "bind", "", "legacy: listen on `HOST:PORT` (use -e instead)")
	f.StringVar(&o.tlsCert, "tlscert", "", "legacy: TLS certificate `FILE` for --bind (with --tlskey)")
	f.StringVar(&o.tlsKey, "tlskey", "", "legacy: TLS private key `FILE` for --bind (with --tlscert)")
	f.BoolVar(&o.checkConfig, "check-config", false, "check endpoints and credential stores, print one line and exit 0 or 1, without serving")
	f.StringVar(&o.cluster.URLs, "cluster", "", "join brokers sharing channels through NATS at `URLS` (nats://host:4222[,nats://…])")
	f.StringVar(&o.cluster.Prefix, "cluster-prefix", "hpfeeds", "NATS subject `PREFIX`, so several hpfeeds networks can share one NATS")
	f.StringVar(&o.cluster.CredsFile, "cluster-creds", "", "NATS credentials `FILE`")
	f.StringVar(&o.cluster.User, "cluster-user", "", "NATS `USER`")
	f.StringVar(&o.cluster.Password, "cluster-password", "", "NATS `PASSWORD`")
	f.StringVar(&o.cluster.Token, "cluster-token", "", "NATS `TOKEN`")
	f.StringVar(&o.cluster.CAFile, "cluster-ca", "", "CA `FILE` to verify NATS servers with")
	f.StringVar(&o.cluster.CertFile, "cluster-cert", "", "client certificate `FILE` for NATS")
	f.StringVar(&o.cluster.KeyFile, "cluster-key", "", "client key `FILE` for NATS")
	f.StringVar(&o.mongoColl, "mongo-collection", "auth_key", "MongoDB `COLLECTION` holding users")

	f.DurationVar(&o.cfg.AuthTimeout, "auth-timeout", broker.DefaultAuthTimeout, "close connections that have not authenticated within this `DURATION`")
	f.DurationVar(&o.cfg.LookupTimeout, "lookup-timeout", broker.DefaultLookupTimeout, "give up a credential lookup after this `DURATION` (the login fails)")
	f.IntVar(&o.cfg.PreAuthMaxSize, "max-preauth-size", broker.DefaultPreAuthMaxSize, "largest frame in `BYTES` before authentication")
	f.IntVar(&o.cfg.MaxPublishSize, "max-publish-size", broker.DefaultMaxPublishSize, "largest PUBLISH body (ident, channel, payload) in `BYTES`")
	f.IntVar(&o.cfg.MaxSubscribeSize, "max-subscribe-size", broker.DefaultMaxSubscribeSize, "largest SUBSCRIBE/UNSUBSCRIBE body in `BYTES`")
	f.IntVar(&o.cfg.SendQueueSoft, "send-queue-soft", broker.DefaultSendQueueSoft, "`BYTES` queued to a subscriber that start the backpressure deadline")
	f.IntVar(&o.cfg.SendQueueLow, "send-queue-low", broker.DefaultSendQueueLow, "`BYTES` a subscriber's queue must drain to for the deadline to be cancelled")
	f.IntVar(&o.cfg.SendQueueHard, "send-queue-hard", broker.DefaultSendQueueHard, "`BYTES` queued to a subscriber that close it at once")
	f.IntVar(&o.cfg.MaxConnections, "max-connections", 0, "close new connections past this many open ones (0: no limit)")
	f.IntVar(&o.cfg.MaxConnectionsPerIP, "max-connections-per-ip", 0, "close new connections past this many open ones from one address (0: no limit)")
	f.IntVar(&o.cfg.LoginThrottle.After, "login-throttle-after", broker.DefaultThrottleAfter, "once one source (an IPv4 address or IPv6 /64) has failed this many logins in a row, check its logins one at a time, spaced from 100ms doubling with each failure (0: off)")
	f.DurationVar(&o.cfg.LoginThrottle.Window, "login-throttle-window", broker.DefaultThrottleWindow, "failed logins further apart than this `DURATION` start a source's count again")
	f.DurationVar(&o.cfg.LoginThrottle.MaxDelay, "login-throttle-max-delay", broker.DefaultThrottleMaxDelay, "the longest spacing (`DURATION`) between the checks of a throttled source's logins")
	f.DurationVar(&o.cfg.BackpressureDeadline, "backpressure-deadline", broker.DefaultBackpressureDeadline, "how long a subscriber may stay past the soft mark (`DURATION`)")
	f.IntVar(&o.cfg.StallMark, "send-queue-stall", broker.DefaultStallMark, "`BYTES` queued to a subscriber that pause its publishers' reads, 5 ms at most each time (flow control)")
	f.DurationVar(&o.cfg.StallTimeout, "send-queue-stall-timeout", broker.DefaultStallTimeout, "close a subscriber past --send-queue-stall that has not drained to half of it within this `DURATION` (negative: never)")
	f.DurationVar(&o.cfg.FrameTimeout, "frame-timeout", broker.DefaultFrameTimeout, "close a connection whose frame in progress is not complete within this `DURATION`")
	o.cfg.MemoryLimit = defaultMemoryLimit()
	f.Var(byteSize{&o.cfg.MemoryLimit}, "memory-limit", "budget for send queues and partially received frames, e.g. 256MiB (0: none); also sets the Go runtime's soft memory limit; the default is the smaller of 1GiB and a quarter of the machine's or cgroup's memory")
	o.retain.addFlags(f, &o.cfg.MaxPublishSize)
	cmd.AddCommand(newUserCmd(), newStatusCmd(), newRetainedCmd())
	return cmd
}

// endpointSpecs returns the endpoint strings to serve, translating the
// legacy --bind/--tlscert/--tlskey flags.
func (o *options) endpointSpecs() ([]string, error) {
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("--tlscert and --tlskey go together: give both or neither")
	}
	if o.tlsCert != "" && o.bind == "" {
		return nil, errors.New("--tlscert and --tlskey apply to --bind; for -e endpoints use tls:…:cert=…:key=…")
	}
	specs := append([]string(nil), o.endpoints...)
	if o.bind != "" {
		host, port, err := net.SplitHostPort(o.bind)
		if err != nil {
			return nil, fmt.Errorf("--bind %q: want HOST:PORT: %w", o.bind, err)
		}
		esc := func(s string) string { return strings.ReplaceAll(s, ":", `\:`) }
		if o.tlsCert != "" {
			specs = append(specs, fmt.Sprintf("tls:interface=%s:port=%s:cert=%s:key=%s", esc(host), port, esc(o.tlsCert), esc(o.tlsKey)))
		} else {
			specs = append(specs, fmt.Sprintf("tcp:interface=%s:port=%s", esc(host), port))
		}
	}
	if len(specs) == 0 {
		specs = []string{"tcp:port=10000"}
	}
	return specs, nil
}

func (o *options) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	if o.debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		opts.ReplaceAttr = durationSeconds
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

// openStores opens every --auth store in order. With check set, each store
// must also answer a ping. With lookups set, each store's lookups are
// measured under its redacted spec.
func (o *options) openStores(ctx context.Context, log *slog.Logger, check bool, lookups *metrics.Lookups) (auth.Chain, error) {
	specs := o.auths
	if len(specs) == 0 {
		specs = []string{"sqlite"}
	}
	var chain, raw auth.Chain
	for _, spec := range specs {
		s, err := openOrPlan(ctx, spec, log, o.mongoColl, check)
		if err != nil {
			chain.Close()
			return nil, err
		}
		if r, ok := s.(reloader); ok {
			o.reloaders = append(o.reloaders, r)
		}
		raw = append(raw, s)
		if lookups != nil {
			s = lookups.Instrument(auth.Redact(spec), s)
		}
		chain = append(chain, s)
	}
	pctx, cancel := context.WithTimeout(ctx, o.cfg.LookupTimeout)
	defer cancel()
	if err := chain.Ping(pctx); err != nil {
		if check {
			chain.Close()
			return nil, fmt.Errorf("credential store unreachable: %w", err)
		}
		// The database may start after the broker: logins fail until it is up.
		log.Warn("credential store unreachable at start-up; logins using it will fail until it answers", "err", withInitHint(err))
	} else {
		warnDuplicates(pctx, log, raw)
		o.opened = raw
	}
	return chain, nil
}

// openStore opens the store of one --auth spec, naming the flag in errors.
func openStore(ctx context.Context, spec string, log *slog.Logger, mongoColl string, set sqlstore.Settings) (auth.Store, error) {
	s, err := auth.Open(ctx, spec, auth.Options{
		Logger:   log,
		Settings: []any{mongostore.Settings{Collection: mongoColl}, set},
	})
	if err != nil {
		return nil, fmt.Errorf("--auth=%s: %w", auth.Redact(spec), err)
	}
	return s, nil
}

// warnDuplicates logs one line per store holding an identifier in several
// rows (equal under the database's collation): the tables of the Python
// broker's documentation have no UNIQUE key.
func warnDuplicates(ctx context.Context, log *slog.Logger, chain auth.Chain) {
	for _, s := range chain {
		d, ok := s.(auth.DuplicateFinder)
		if !ok {
			continue
		}
		idents, err := d.DuplicateIdents(ctx)
		if err != nil {
			log.Debug("could not check the store for duplicate identifiers", "store", s.String(), "err", err)
			continue
		}
		if len(idents) > 0 {
			log.Warn("identifiers held by several rows the database finds equal: each logs in only when spelled exactly as stored; "+
				"remove the extra rows and add a UNIQUE key on the identifier (see docs/migration.md)",
				"store", s.String(), "count", len(idents), "first", fmt.Sprintf("%.64q", idents[:min(len(idents), 10)]))
		}
	}
}

func (o *options) run(ctx context.Context) error {
	// Held from the start: logrotate's SIGHUP must never kill the broker,
	// not even while it starts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log, err := o.logger()
	if err != nil {
		return err
	}
	eps, err := o.parseEndpoints()
	if err != nil {
		return err
	}
	if o.checkConfig {
		return o.check(ctx, eps)
	}
	var lookups *metrics.Lookups
	if o.exporter != "" {
		lookups = metrics.NewLookups()
	}
	store, err := o.openStores(ctx, log, false, lookups)
	if err != nil {
		return err
	}
	defer store.Close()
	cfg := o.cfg
	cfg.Auth = store
	cfg.Logger = log
	cfg.AfterAcceptBurst = compactMemory
	if cfg.RevalidateEvery == 0 {
		cfg.RevalidateEvery = -1 // the flag's 0 is the library's "never"
	}
	cfg.LoginThrottle.Disabled = cfg.LoginThrottle.After == 0
	bridge, closeBridge, err := o.joinClusterAndRetain(log, &cfg) // retain.go
	if err != nil {
		return err
	}
	defer closeBridge()
	b, err := broker.New(cfg)
	if err != nil {
		return err
	}
	if bridge != nil {
		bridge.Attach(b)
	}

	listeners, err := listenAll(ctx, eps, log)
	if err != nil {
		return err
	}
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var exporter net.Listener
	if o.exporter != "" {
		if exporter, err = net.Listen("tcp", o.exporter); err != nil {
			return fmt.Errorf("--exporter %s: %w (is another process using it? give a free HOST:PORT)", o.exporter, err)
		}
		defer exporter.Close()
	}
	o.warnAtStart(ctx, log)
	applyMemoryLimit(log, cfg.MemoryLimit)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go o.onHUP(ctx, log, hup, listeners)
	log.Info("starting", "name", cfg.Name, "credential_stores", store.String())
	if exporter != nil {
		srv := o.serveExporter(log, exporter, b, registry(b, lookups, bridge, o.sizeBuckets))
		defer srv.Close()
	}
	return serve(ctx, log, b, listeners)
}

// serve serves the listeners until ctx ends or one fails, then shuts the
// broker down.
func serve(ctx context.Context, log *slog.Logger, b *broker.Broker, listeners []*broker.Listener) error {
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		log.Info("listening", "endpoint", l.Endpoint.String(), "addr", l.Addr().String())
		go func() { errc <- b.Serve(l, l.Endpoint.Mode) }()
	}
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-errc:
		log.Error("endpoint failed; shutting down", "err", serveErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Shutdown(sctx); err != nil {
		log.Warn("connections still open at exit", "err", err)
	}
	return serveErr
}

// parseEndpoints parses the endpoints to serve and checks the exporter's
// flags: its address's syntax and its web configuration file.
func (o *options) parseEndpoints() ([]broker.Endpoint, error) {
	specs, err := o.endpointSpecs()
	if err != nil {
		return nil, err
	}
	var eps []broker.Endpoint
	for _, s := range specs {
		ep, err := broker.ParseEndpoint(s)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if o.exporter != "" {
		if _, _, err := net.SplitHostPort(o.exporter); err != nil {
			return nil, fmt.Errorf("--exporter %q: want HOST:PORT: %w", o.exporter, err)
		}
	}
	if o.webConfig != "" {
		if o.exporter == "" {
			return nil, errors.New("--web-config-file applies to --exporter: give both or neither")
		}
		if err := metrics.CheckWebConfig(o.webConfig); err != nil {
			return nil, fmt.Errorf("--web-config-file: %w", err)
		}
	}
	return eps, nil
}

// listenAll binds every endpoint, or none.
func listenAll(ctx context.Context, eps []broker.Endpoint, log *slog.Logger) ([]*broker.Listener, error) {
	var listeners []*broker.Listener
	for _, ep := range eps {
		l, err := broker.Listen(ctx, ep, log)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			if errors.Is(err, syscall.EADDRINUSE) {
				err = fmt.Errorf("%w (is another process using it? give a free port)", err)
			}
			return nil, err
		}
		listeners = append(listeners, l)
	}
	return listeners, nil
}

// serveExporter serves /metrics, /healthz and the status pages on l until
// the returned server is closed.
func (o *options) serveExporter(log *slog.Logger, l net.Listener, b *broker.Broker, reg *prometheus.Registry) *http.Server {
	mux := metrics.Handler(reg)
	status.Mount(mux, b, status.Options{StaleAfter: o.staleAfter, Name: o.cfg.Name, Version: version.String()})
	srv, served := metrics.Server(l, mux, metrics.ServerOptions{
		WebConfigFile: o.webConfig, MaxConns: o.exporterMaxConns, Logger: log,
	})
	log.Info("serving metrics", "addr", l.Addr().String(), "paths", "/metrics /healthz / /connz /chanz /identz",
		"web_config", o.webConfig)
	go func() {
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics exporter stopped", "err", err)
		}
	}()
	return srv
}

func registry(b *broker.Broker, lookups *metrics.Lookups, bridge *cluster.Bridge, sizeBuckets bool) *prometheus.Registry {
	reg := metrics.NewRegistry(b, lookups)
	if !sizeBuckets {
		// Unregister finds the registered collector by its descriptors.
		reg.Unregister(metrics.NewCollector(b))
		reg.MustRegister(metrics.NewCollector(b).WithoutPublishSizeBuckets())
	}
	if bridge != nil {
		reg.MustRegister(metrics.NewClusterCollector(bridge.Stats))
	}
	return reg
}

// compactMemory returns the memory a burst of logins left behind to the
// OS: it collects twice, since each collection at most halves a
// goroutine's stack. One run per burst costs milliseconds.
func compactMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}
