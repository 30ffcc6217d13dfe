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
{{- else if or .Values.auth.virtualKey .Values.auth.basicAuthUsername .Values.auth.basicAuthPassword .Values.auth.bearerToken .Values.auth.extraHeaders }}
{{- printf "%s-auth" (include "bbe.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The gateway credentials the pods get from the auth Secret, as {"items": [{cred, key, file, setting}]}: `key` in the
Secret, mounted as `file` under /etc/bifrost-batch-exporter/auth and named by the exporter's `setting` (a *_file
setting, re-read when it changes). The user name is not a *_file setting; it travels as an env var (bbe.env).
A chart-rendered Secret uses fixed key names; an existingSecret uses auth.existingSecretKeys, and only the
credentials whose key is not empty there.
*/}}
{{- define "bbe.authFiles" -}}
{{- $auth := .Values.auth }}
{{- if and $auth.existingSecret (not (or $auth.existingSecretKeys.virtualKey $auth.existingSecretKeys.basicAuthUsername $auth.existingSecretKeys.basicAuthPassword $auth.existingSecretKeys.bearerToken $auth.existingSecretKeys.extraHeaders)) }}
{{- fail (printf "auth.existingSecret %q is set, but auth.existingSecretKeys names none of its keys, so no credential would reach the exporter: set auth.existingSecretKeys.virtualKey (or basicAuthUsername and basicAuthPassword, or bearerToken; extraHeaders) to the key names in that Secret, or leave auth.existingSecret empty" $auth.existingSecret) }}
{{- end }}
{{- $items := list }}
{{- range $cred := list "virtualKey" "basicAuthPassword" "bearerToken" }}
{{- $file := get (dict "virtualKey" "virtual-key" "basicAuthPassword" "basic-auth-password" "bearerToken" "bearer-token") $cred }}
{{- $setting := get (dict "virtualKey" "virtual_key_file" "basicAuthPassword" "basic_auth_password_file" "bearerToken" "bearer_token_file") $cred }}
{{- $key := "" }}
{{- if $auth.existingSecret }}
{{- $key = get $auth.existingSecretKeys $cred }}
{{- else if get $auth $cred }}
{{- $key = $file }}
{{- end }}
{{- if $key }}
{{- $items = append $items (dict "cred" $cred "key" $key "file" $file "setting" $setting) }}
{{- end }}
{{- end }}
{{- toYaml (dict "items" $items) }}
{{- end }}

{{/* Name of the Secret with one virtual key per tenant (mounted as virtual_key_dir), or "" when there is none. */}}
{{- define "bbe.virtualKeysSecretName" -}}
{{- if .Values.auth.virtualKeysSecret }}
{{- .Values.auth.virtualKeysSecret }}
{{- else if .Values.auth.virtualKeys }}
{{- printf "%s-virtual-keys" (include "bbe.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the per-tenant virtual keys are mounted (the exporter's virtual_key_dir). */}}
{{- define "bbe.virtualKeysDir" -}}/etc/bifrost-batch-exporter/virtual-keys{{- end }}

{{/* Where the auth Secret's files are mounted. */}}
{{- define "bbe.authDir" -}}/etc/bifrost-batch-exporter/auth{{- end }}

{{/* persistence.enabled: "pvc" or "emptyDir" (the kind of volume mounted at state_dir), else "". */}}
{{- define "bbe.stateVolume" -}}
{{- if .Values.persistence.enabled }}{{ .Values.persistence.type }}{{ end }}
{{- end }}

{{/* The exporter's config.yaml. No secrets: those are files from the auth Secret, named here by *_file settings. */}}
{{- define "bbe.configYaml" -}}
{{- $config := deepCopy .Values.config }}
{{- if $config.extra_headers }}
{{- fail "config.extra_headers would be written into a ConfigMap (readable with `get configmaps`), but the exporter treats header values as secrets: set them in auth.extraHeaders (rendered into the Secret) or name an existing Secret's entry in auth.existingSecretKeys.extraHeaders" }}
{{- end }}
{{- $_ := unset $config "extra_headers" }}
{{- /* The exporter's own checks across settings, here too: at `helm install`, not as a pod in CrashLoopBackOff. */}}
{{- $poll := float64 (default 30 $config.poll_interval_seconds) }}
{{- if and (hasKey $config "stale_after_seconds") (not (kindIs "invalid" $config.stale_after_seconds)) }}
{{- if lt (float64 $config.stale_after_seconds) $poll }}
{{- fail (printf "config.stale_after_seconds (%v) must be >= config.poll_interval_seconds (%v)" $config.stale_after_seconds $poll) }}
{{- end }}
{{- end }}
{{- if and (ne (lower (toString (default "incremental" $config.poll_mode))) "full") (lt (float64 (default 600 $config.resync_interval_seconds)) $poll) }}
{{- fail (printf "config.resync_interval_seconds (%v) must be >= config.poll_interval_seconds (%v) in incremental poll_mode" (default 600 $config.resync_interval_seconds) $poll) }}
{{- end }}
{{- if has (toString (default "/metrics" $config.telemetry_path)) (list "/" "/healthz" "/readyz") }}
{{- fail (printf "config.telemetry_path %q is served by the exporter already; choose another path" $config.telemetry_path) }}
{{- end }}
{{- /* `:PORT` is every address of both families: the kubelet probes and Prometheus scrapes status.podIP, which is
     IPv6 on an IPv6 or IPv6-primary cluster. A config.listen_address of its own must keep containerPort. */}}
{{- $port := printf ":%d" (int .Values.containerPort) }}
{{- if hasKey $config "listen_address" }}
{{- if not (hasSuffix $port (toString $config.listen_address)) }}
{{- fail (printf "config.listen_address %q must end in %s, the containerPort that the probes, the Service and the NetworkPolicy use (or leave it out: %s listens on IPv4 and IPv6)" (toString $config.listen_address) $port $port) }}
{{- end }}
{{- else }}
{{- $_ := set $config "listen_address" $port }}
{{- end }}
{{- if include "bbe.webConfigEnabled" . }}
{{- $_ := set $config "web_config_file" "/etc/bifrost-batch-exporter/web/web-config.yml" }}
{{- end }}
{{- $authDir := include "bbe.authDir" . }}
{{- range (include "bbe.authFiles" . | fromYaml).items }}
{{- $_ := set $config .setting (printf "%s/%s" $authDir .file) }}
{{- end }}
{{- if include "bbe.stateVolume" . }}
{{- $_ := set $config "state_dir" .Values.persistence.mountPath }}
{{- end }}
{{- if include "bbe.virtualKeysSecretName" . }}
{{- if hasKey $config "virtual_key_file" }}
{{- fail "auth.virtualKeys / auth.virtualKeysSecret (one key per tenant) cannot be combined with a single virtual key (auth.virtualKey or auth.existingSecretKeys.virtualKey)" }}
{{- end }}
{{- $_ := set $config "virtual_key_dir" (include "bbe.virtualKeysDir" .) }}
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

{{/* Environment of the exporter container: the shard's providers, the gateway user name, extra headers, extraEnv. */}}
{{- define "bbe.env" -}}
{{- $root := .root }}
{{- $auth := $root.Values.auth }}
{{- $env := list }}
{{- if .instance.providers }}
{{- $env = append $env (dict "name" "BIFROST_EXPORTER_PROVIDERS" "value" (join "," .instance.providers)) }}
{{- end }}
{{- $userKey := "" }}
{{- if $auth.existingSecret }}
{{- $userKey = $auth.existingSecretKeys.basicAuthUsername }}
{{- else if $auth.basicAuthUsername }}
{{- $userKey = "basic-auth-username" }}
{{- end }}
{{- if $userKey }}
{{- $ref := dict "name" (include "bbe.authSecretName" $root) "key" $userKey }}
{{- $env = append $env (dict "name" "BIFROST_EXPORTER_BASIC_AUTH_USERNAME" "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- /* extra_headers (the exporter treats every value as a secret) come from the Secret too, as the JSON object the
     exporter reads from BIFROST_EXPORTER_EXTRA_HEADERS: there is no *_file setting for them. */}}
{{- $headersKey := "" }}
{{- if $auth.existingSecret }}
{{- $headersKey = $auth.existingSecretKeys.extraHeaders }}
{{- else if $auth.extraHeaders }}
{{- $headersKey = "extra-headers" }}
{{- end }}
{{- if $headersKey }}
{{- $ref := dict "name" (include "bbe.authSecretName" $root) "key" $headersKey }}
{{- $env = append $env (dict "name" "BIFROST_EXPORTER_EXTRA_HEADERS" "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- $env = concat $env $root.Values.extraEnv }}
{{- if $env }}{{ toYaml $env }}{{ end }}
{{- end }}

{{- /* A Prometheus duration ("1m30s", "500ms"; the schema checks its form) in milliseconds, to compare two. */}}
{{- define "bbe.durationMs" -}}
{{- $ms := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 "y" 31536000000 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" . -1 }}
{{- $number := regexFind "^[0-9]+" . }}
{{- $total = add $total (mul (atoi $number) (get $ms (trimPrefix $number .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{- /* The PromQL matchers that select this release's targets: prometheusRule.selector, else the labels the
Prometheus Operator gives the targets of this release's ServiceMonitors: `namespace`, the Service's namespace (the
release's), and `job`, the Service's name (fullname or fullname-<shard>). Exact names, not a prefix: a release
"x-staging" beside "x", or the same release name in another namespace under one Prometheus, must not page this
release's team, nor keep its absent(up{...}) clause quiet when this release is not scraped at all. The rules and the
shipped dashboards both use it, so they select the same series. */}}
{{- define "bbe.targetSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- $jobs := list }}
{{- range (include "bbe.instances" . | fromYaml).items }}{{ $jobs = append $jobs (regexQuoteMeta .name) }}{{ end }}
{{- printf "namespace=%q, job=~%q" .Release.Namespace (join "|" $jobs) }}
{{- end }}
{{- end }}
