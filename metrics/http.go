package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

// NewRegistry returns a registry with b's series, the lookup metrics of
// lookups (if not nil), and the Go runtime and process collectors.
func NewRegistry(b *broker.Broker, lookups *Lookups) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(b),
		NewRetainCollector(b),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if lookups != nil {
		reg.MustRegister(lookups)
	}
	return reg
}

// Handler serves /metrics from reg and /healthz, which answers {} with 200
// as the Python broker's does. Other pages (the status package's) can be
// added to the mux it returns.
func Handler(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Write([]byte("{}"))
	})
	return mux
}

// Limits of the exporter's HTTP server: a scraper or a browser needs a few
// connections and well under the timeouts; anything else is held no longer.
const (
	DefaultMaxConns     = 64
	DefaultIdleTimeout  = 30 * time.Second // shorter than Prometheus' default 1 m scrape interval: scrapes reconnect, idle sockets go
	DefaultReadTimeout  = 10 * time.Second // a GET has no body: the header is all there is to read
	DefaultWriteTimeout = 30 * time.Second // a scrape or a status page of thousands of connections takes milliseconds
)

// ServerOptions harden the exporter's listener; zero fields take the
// defaults above.
type ServerOptions struct {
	// WebConfigFile is a web configuration file in the Prometheus
	// exporter-toolkit format (TLS, basic authentication); empty serves
	// plain HTTP to anyone.
	WebConfigFile string
	// MaxConns bounds the connections open at once; past it a new one
	// takes the slot of one that is idle or has not asked yet (slots).
	MaxConns                               int
	IdleTimeout, ReadTimeout, WriteTimeout time.Duration
	Logger                                 *slog.Logger
}

// Server serves h on l until l is closed or srv shut down, with the
// timeouts, the connection cap and the web configuration of opts. srv is
// returned at once so the caller can close it; errc gets Serve's result.
func Server(l net.Listener, h http.Handler, opts ServerOptions) (srv *http.Server, errc <-chan error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&opts.IdleTimeout, DefaultIdleTimeout)
	def(&opts.ReadTimeout, DefaultReadTimeout)
	def(&opts.WriteTimeout, DefaultWriteTimeout)
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: opts.ReadTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	out := make(chan error, 1)
	// exporter-toolkit says at INFO what it serves; the caller's own
	// start-up line already does.
	quiet := slog.New(levelAtLeast{opts.Logger.Handler(), slog.LevelWarn})
	sl := newSlots(l, opts.MaxConns)
	srv.ConnState, srv.ConnContext = sl.track, sl.mark
	var served net.Listener = sl
	if opts.WebConfigFile != "" {
		served = &gated{Listener: sl, srv: srv}
	}
	go func() {
		out <- web.Serve(served, srv, &web.FlagConfig{WebConfigFile: &opts.WebConfigFile}, quiet)
	}()
	return srv, out
}

// CheckWebConfig reads a web configuration file and its certificates, as
// the server will.
func CheckWebConfig(path string) error {
	if err := web.Validate(path); err != nil {
		return fmt.Errorf("web configuration %s: %w", path, err)
	}
	return nil
}

// levelAtLeast drops records below its level.
type levelAtLeast struct {
	slog.Handler
	min slog.Level
}

func (h levelAtLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}
