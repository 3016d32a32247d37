// Package metrics exposes brokerd's counters in the Prometheus text
// format through client_golang. Counters the broker keeps as atomics are
// read at scrape time; histograms are fed by hooks installed in the
// broker and store configs.
package metrics

import (
	"net/http"
	"time"

	"github.com/brokerd/brokerd/broker"
	"github.com/brokerd/brokerd/cluster"
	"github.com/brokerd/brokerd/subproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const ns = "brokerd"

// Metrics holds the registry and the histograms fed by hooks.
type Metrics struct {
	reg           *prometheus.Registry
	publishAck    prometheus.Histogram
	commitRecords prometheus.Histogram
	commitSeconds prometheus.Histogram
	renewLateness prometheus.Histogram // registered in a cluster only
	reloads       *prometheus.CounterVec
}

// New returns Metrics with its histograms; call Register once the broker
// exists.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		publishAck: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "publish_ack_seconds",
			Help:    "Time from receiving a publish to its durable ok.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms .. 4s
		}),
		commitRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_commit_batch_records",
			Help:    "Records and consumer commits sharing one store transaction and fsync.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 .. 8192
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_commit_seconds",
			Help:    "Duration of one store transaction including its fsync.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}),
		renewLateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "cluster_lease_renew_lateness_seconds",
			Help:    "How late each renewal of a partition lease this node holds was answered, from when it was due (a third of the lease TTL after the last one). Values near the lease TTL mean leases are about to be lost.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14), // 1ms .. 8s
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "config_reloads_total",
			Help: "Reloads of the configuration (SIGHUP), by result: ok, or error when the new configuration was refused and the old one kept.",
		}, []string{"result"}),
	}
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	m.reg.MustRegister(m.reloads, m.publishAck, m.commitRecords, m.commitSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObservePublish records one publish-to-ok latency.
func (m *Metrics) ObservePublish(d time.Duration) { m.publishAck.Observe(d.Seconds()) }

// ObserveCommit records one store transaction.
func (m *Metrics) ObserveCommit(ops int, d time.Duration) {
	m.commitRecords.Observe(float64(ops))
	m.commitSeconds.Observe(d.Seconds())
}

// ObserveReload counts one configuration reload; err is why it was
// refused, nil when it was applied.
func (m *Metrics) ObserveReload(err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reloads.WithLabelValues(result).Inc()
}

// ObserveRenewLateness records how late one lease renewal was.
func (m *Metrics) ObserveRenewLateness(d time.Duration) { m.renewLateness.Observe(d.Seconds()) }

// Sources are the values read at scrape time.
type Sources struct {
	Broker     *broker.Server
	StoreBytes func() int64 // size of the store file
	Topics     func() int64 // topics the store holds
	ReadPanics func() int64 // panics recovered in WebSocket readers
	Rejected   func() (connLimit, rateLimit int64)
	Cluster    func() cluster.Stats // set when the node is in a cluster
	Edge       EdgeStats            // the HTTP and WebSocket edge, when set
}

// EdgeStats are the counters of the network edge (internal/server).
type EdgeStats interface {
	HTTPRejected() (conns, requests int64)
	HTTPConnections() int64
	HTTPWriteTimeouts() int64
	AcceptErrors() int64
	Unauthed() int64
	RejectedUnauthed() int64
}

// Register adds the broker's counters and gauges.
func (m *Metrics) Register(src Sources) {
	st := src.Broker.Stats()
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help}, f))
	}
	gauge("connections", "Open client connections.", func() float64 { return float64(st.Connections.Load()) })
	counter("connections_total", "Client connections accepted.", func() float64 { return float64(st.ConnectionsTotal.Load()) })
	gauge("subscriptions", "Live subscriptions.", func() float64 { return float64(st.Subscriptions.Load()) })
	counter("published_total", "Messages stored (duplicates by idempotency key excluded).", func() float64 { return float64(st.Published.Load()) })
	counter("published_duplicates_total", "Publishes answered as duplicates of an earlier key.", func() float64 { return float64(st.PublishedDup.Load()) })
	counter("delivered_total", "Messages written to subscribers.", func() float64 { return float64(st.Delivered.Load()) })
	counter("frames_in_total", "WebSocket frames received.", func() float64 { return float64(st.FramesIn.Load()) })
	counter("frames_out_total", "WebSocket frames written.", func() float64 { return float64(st.FramesOut.Load()) })
	counter("bytes_in_total", "Payload bytes received.", func() float64 { return float64(st.BytesIn.Load()) })
	counter("bytes_out_total", "Payload bytes written.", func() float64 { return float64(st.BytesOut.Load()) })
	counter("catchups_total", "Times a subscription fell behind and was fed from the topic log.", func() float64 { return float64(st.CatchUps.Load()) })
	counter("slow_consumer_closes_total", "Connections closed (4008) because they stopped draining.", func() float64 { return float64(st.SlowCloses.Load()) })
	counter("slow_pattern_ends_total", "Pattern subscriptions ended as slow.", func() float64 { return float64(st.SlowPatternEnds.Load()) })
	gauge("pending_publish_bytes", "Data of publishes waiting to be durable (bounded by --pending-bytes).", func() float64 { return float64(src.Broker.PendingBytes()) })
	counter("pending_publish_waits_total", "Times a publisher's reads paused because --max-pending-bytes or --pending-bytes was reached.", func() float64 { return float64(st.PendingWaits.Load()) })
	counter("storage_errors_total", "Store writes that failed (a full disk, an I/O error); clients got unavailable and /readyz answers 503 until a write succeeds.", func() float64 { return float64(st.StorageErrors.Load()) })
	counter("rate_limit_closes_total", "Connections closed (4029) for sending commands too fast.", func() float64 { return float64(st.RateLimited.Load()) })
	if src.StoreBytes != nil {
		gauge("store_bytes", "Size of the store file.", func() float64 { return float64(src.StoreBytes()) })
	}
	if src.Topics != nil {
		gauge("topics", "Topics the store holds (bounded by --max-topics).", func() float64 { return float64(src.Topics()) })
	}
	gauge("ephemeral_topics", "Ephemeral topics this node holds (at most 10,000).", func() float64 { n, _ := src.Broker.EphemeralUse(); return float64(n) })
	gauge("ephemeral_bytes", "Memory of the ephemeral topics' records on this node (at most 256 MiB).", func() float64 { _, b := src.Broker.EphemeralUse(); return float64(b) })
	gauge("presence_members", "Presence members connected to this node.", func() float64 { return float64(st.PresenceMembers.Load()) })
	counter("presence_events_total", "Presence join and leave events queued to members of this node.", func() float64 { return float64(st.PresenceEvents.Load()) })
	counter("presence_lists_total", "Presence lists served (presence commands and GET /v1/topics/{topic}/presence).", func() float64 { return float64(st.PresenceLists.Load()) })
	counter("presence_muted_total", "Times a topic stopped sending join and leave for having more than 1,000 members.", func() float64 { return float64(st.PresenceMuted.Load()) })
	counter("topics_reclaimed_total", "Topics deleted after --topic-idle holding no message and no subscriber.", func() float64 { return float64(st.TopicsReclaimed.Load()) })
	if src.ReadPanics != nil {
		counter("ws_reader_panics_total", "Panics recovered in WebSocket readers (the connection was closed with 1002).", func() float64 { return float64(src.ReadPanics()) })
	}
	if src.Rejected != nil {
		counter("connections_rejected_limit_total", "Connections refused because the connection limit was reached (1013).", func() float64 { a, _ := src.Rejected(); return float64(a) })
		counter("connections_rejected_rate_total", "Connections refused by the per-IP connection rate limit (429).", func() float64 { _, b := src.Rejected(); return float64(b) })
	}
	if e := src.Edge; e != nil {
		gauge("http_connections", "Open HTTP connections not upgraded to WebSocket.", func() float64 { return float64(e.HTTPConnections()) })
		counter("http_connections_rejected_total", "HTTP connections closed at once because --max-http-connections were open.", func() float64 { a, _ := e.HTTPRejected(); return float64(a) })
		counter("http_requests_rejected_total", "HTTP requests answered 503 because --max-http-requests were being served.", func() float64 { _, b := e.HTTPRejected(); return float64(b) })
		gauge("connections_unauthenticated", "Open connections that have yet to authenticate (bounded by --max-unauth-connections).", func() float64 { return float64(e.Unauthed()) })
		counter("connections_rejected_unauthenticated_total", "Connections refused (1013) because --max-unauth-connections were waiting to authenticate.", func() float64 { return float64(e.RejectedUnauthed()) })
		counter("accept_errors_total", "Failed accepts of the listener (the open-file limit reached, above all); each is retried after a short pause.", func() float64 { return float64(e.AcceptErrors()) })
		counter("http_write_timeouts_total", "HTTP answers (history pages) cut off because the client did not read them within --http-write-timeout.", func() float64 { return float64(e.HTTPWriteTimeouts()) })
	}
	if src.Cluster != nil {
		m.reg.MustRegister(m.renewLateness)
		gauge("cluster_members", "Live nodes of the cluster, as this node saw them at its last lease pass.", func() float64 { return float64(src.Cluster().Members) })
		gauge("cluster_partitions_owned", "Partitions this node owns.", func() float64 { return float64(src.Cluster().Owned) })
		gauge("cluster_partitions_under_replicated", "Partitions this node owns whose lease names fewer followers holding every acknowledged record than --replicas asks for.", func() float64 { return float64(src.Cluster().UnderReplicated) })
		gauge("cluster_followers_syncing", "Followers of this node's partitions being brought up to date.", func() float64 { return float64(src.Cluster().Syncing) })
		counter("cluster_takeovers_total", "Partitions this node took over with their history (from a dead, draining or balancing owner).", func() float64 { return float64(src.Cluster().Takeovers) })
		counter("cluster_epoch_resets_total", "Local topics this node started in a new epoch because it did not hold their history.", func() float64 { return float64(src.Cluster().EpochResets) })
		counter("cluster_resends_total", "Times this node sent a follower records again because their confirmation did not come (a request or its answer lost).", func() float64 { return float64(src.Cluster().Resends) })
	}
	m.reg.MustRegister(&errorCollector{st: st, desc: prometheus.NewDesc(ns+"_errors_total", "Errors answered, by code.", []string{"code"}, nil)})
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

type errorCollector struct {
	st   *broker.Stats
	desc *prometheus.Desc
}

func (c *errorCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *errorCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ci := range subproto.Codes() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.st.ErrorCount(ci.Code)), string(ci.Code))
	}
}
