{{/* Chart name, possibly overridden. */}}
{{- define "bbe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name prefix; shard objects append "-<shard>", so keep room for it (max 63 - 1 - 20). */}}
{{- define "bbe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bbe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object. */}}
{{- define "bbe.labels" -}}
helm.sh/chart: {{ include "bbe.chart" . }}
{{ include "bbe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bifrost-batch-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selects every exporter pod of the release (all shards). */}}
{{- define "bbe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bbe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Label that tells shards apart. */}}
{{- define "bbe.shardLabelKey" -}}bifrost-batch-exporter/shard{{- end }}

{{/*
The Deployments to render, as {"items": [{name, shard, providers, replicas}]}: one per shard, or a single one named
after the release when `shards` is empty. Also enforces what the JSON schema cannot: unique shard names and each
provider in at most one shard.
*/}}
{{- define "bbe.instances" -}}
{{- $full := include "bbe.fullname" . }}
{{- $items := list }}
{{- if .Values.shards }}
{{- $seenNames := dict }}
{{- $seenProviders := dict }}
{{- range .Values.shards }}
{{- if hasKey $seenNames .name }}
{{- fail (printf "shards: shard name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $seenNames .name true }}
{{- $shardName := .name }}
{{- range .providers }}
{{- if hasKey $seenProviders . }}
{{- fail (printf "shards: provider %q is in shard %q and in shard %q; each provider must be polled by one shard only" . (get $seenProviders .) $shardName) }}
{{- end }}
{{- $_ := set $seenProviders . $shardName }}
{{- end }}
{{- $replicas := $.Values.replicaCount }}
{{- if hasKey . "replicas" }}{{ $replicas = .replicas }}{{ end }}
{{- $items = append $items (dict "name" (printf "%s-%s" $full .name) "shard" .name "providers" .providers "replicas" $replicas) }}
{{- end }}
{{- else }}
{{- $items = append $items (dict "name" $full "shard" "" "providers" list "replicas" .Values.replicaCount) }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end }}

{{- define "bbe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bbe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bbe.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the exporter's own server needs a web config file (TLS and/or basic auth). */}}
{{- define "bbe.webConfigEnabled" -}}
{{- if or .Values.webConfig.tls.enabled (not (empty .Values.webConfig.basicAuthUsers)) }}true{{ end }}
{{- end }}

{{- define "bbe.scheme" -}}
{{- if .Values.webConfig.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Name of the Secret with the gateway credentials, or "" when there is none. */}}
{{- define "bbe.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if or .Values.auth.virtualKey .Values.auth.basicAuthUsername .Values.auth.basicAuthPassword .Values.auth.bearerToken }}
{{- printf "%s-auth" (include "bbe.fullname" .) }}
{{- end }}
{{- end }}

{{/* The exporter's config.yaml (no secrets: those come from env). */}}
{{- define "bbe.configYaml" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "listen_address" (printf "0.0.0.0:%d" (int .Values.containerPort)) }}
{{- if include "bbe.webConfigEnabled" . }}
{{- $_ := set $config "web_config_file" "/etc/bifrost-batch-exporter/web/web-config.yml" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The exporter-toolkit web config. */}}
{{- define "bbe.webConfigYaml" -}}
{{- $web := dict }}
{{- if .Values.webConfig.tls.enabled }}
{{- if not .Values.webConfig.tls.secretName }}
{{- fail "webConfig.tls.enabled needs webConfig.tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- $_ := set $web "tls_server_config" (dict "cert_file" "/etc/bifrost-batch-exporter/tls/tls.crt" "key_file" "/etc/bifrost-batch-exporter/tls/tls.key" "min_version" .Values.webConfig.tls.minVersion) }}
{{- end }}
{{- with .Values.webConfig.basicAuthUsers }}
{{- $_ := set $web "basic_auth_users" . }}
{{- end }}
{{- toYaml $web }}
{{- end }}

{{/* Probe: the values' timings plus an httpGet on path (unless the values bring their own handler). */}}
{{- define "bbe.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if not (or (hasKey $probe "httpGet") (hasKey $probe "tcpSocket") (hasKey $probe "exec") (hasKey $probe "grpc")) }}
{{- $_ := set $probe "httpGet" (dict "path" .path "port" "http-metrics" "scheme" .scheme) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Environment of the exporter container: the shard's providers, the gateway credentials, extraEnv. */}}
{{- define "bbe.env" -}}
{{- $root := .root }}
{{- $authSecret := include "bbe.authSecretName" $root }}
{{- $envKeys := dict "virtualKey" "BIFROST_EXPORTER_VIRTUAL_KEY" "basicAuthUsername" "BIFROST_EXPORTER_BASIC_AUTH_USERNAME" "basicAuthPassword" "BIFROST_EXPORTER_BASIC_AUTH_PASSWORD" "bearerToken" "BIFROST_EXPORTER_BEARER_TOKEN" }}
{{- $env := list }}
{{- if .instance.providers }}
{{- $env = append $env (dict "name" "BIFROST_EXPORTER_PROVIDERS" "value" (join "," .instance.providers)) }}
{{- end }}
{{- if $authSecret }}
{{- range $key := list "virtualKey" "basicAuthUsername" "basicAuthPassword" "bearerToken" }}
{{- if or $root.Values.auth.existingSecret (get $root.Values.auth $key) }}
{{- $ref := dict "name" $authSecret "key" (get $root.Values.auth.existingSecretKeys $key) }}
{{- if $root.Values.auth.existingSecret }}{{ $_ := set $ref "optional" true }}{{ end }}
{{- $env = append $env (dict "name" (get $envKeys $key) "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $env = concat $env $root.Values.extraEnv }}
{{- if $env }}{{ toYaml $env }}{{ end }}
{{- end }}
