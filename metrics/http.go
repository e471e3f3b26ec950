package metrics

import (
	"net/http"

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
