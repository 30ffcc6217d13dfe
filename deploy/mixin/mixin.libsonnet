// The bifrost-batch-exporter monitoring mixin: prometheusAlerts, prometheusRules and grafanaDashboards from one
// _config (config.libsonnet). deploy/mixin/generate.py writes deploy/prometheus/alerts.yaml and rules.yaml and the
// Helm chart's rule file from it. Usage: docs/mixin.md.
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
(import 'cost.libsonnet') +
(import 'dashboards.libsonnet')
