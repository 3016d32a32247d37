package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// SetBuildInfo registers brokerd_build_info, a gauge always 1 whose labels
// name the running build: version (as `brokerd version` prints it) and
// goversion. Call it once.
func (m *Metrics) SetBuildInfo(version string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   ns,
		Name:        "build_info",
		Help:        "Always 1; the labels name the running build (its version and the Go release it was built with).",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	m.reg.MustRegister(g)
}

// RegisterReady registers brokerd_ready, 1 while ready reports true (as
// /readyz answers 200) and 0 otherwise, read at scrape time, so that
// Prometheus can alert on a node that is up but not ready.
func (m *Metrics) RegisterReady(ready func() bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns,
		Name:      "ready",
		Help:      "1 while the node is ready (/readyz answers 200), 0 while it drains or its store is unusable or refuses writes.",
	}, func() float64 {
		if ready() {
			return 1
		}
		return 0
	}))
}
