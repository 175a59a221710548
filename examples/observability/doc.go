// Package observability holds the Grafana dashboard and Prometheus alert rules for the cache's metrics; its test checks them against the metrics the library exports.
package observability
