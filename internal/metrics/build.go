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
