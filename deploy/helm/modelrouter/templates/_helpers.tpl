{{/* The release's resource name: RELEASE-modelrouter, or RELEASE if it names the chart. */}}
{{- define "modelrouter.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelrouter.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelrouter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "modelrouter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret of environment variables: the user's own, or the chart's. */}}
{{- define "modelrouter.envSecret" -}}
{{- default (printf "%s-env" (include "modelrouter.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "modelrouter.tlsSecret" -}}
{{- default (printf "%s-tls" (include "modelrouter.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* Whether the chart's own env Secret has anything to hold. */}}
{{- define "modelrouter.hasEnv" -}}
{{- if or .Values.secretEnv .Values.redis.url .Values.postgresql.url (and .Values.auth.enabled .Values.auth.keys) -}}true{{- end -}}
{{- end -}}

{{/* Seconds the kubelet waits before SIGKILL: the preStop sleep, the drain, the grace, 5 s. */}}
{{- define "modelrouter.terminationGracePeriod" -}}
{{- add (int .Values.preStopSleepSeconds) (int (ceil .Values.drainDelaySeconds)) (int (ceil .Values.gracePeriodSeconds)) 5 -}}
{{- end -}}

{{/*
The modelrouter configuration file: .Values.config with the keys the chart manages.
Secrets never appear here: they are ${VAR} references to the env Secret.
*/}}
{{- define "modelrouter.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if hasKey (default (dict) $config.server) "replica_id" -}}
{{- fail "config.server.replica_id: leave it unset: every pod would share it; the chart sets MODELROUTER_REPLICA_ID to each pod's name" -}}
{{- end -}}
{{- $server := dict
    "host" "[::]"
    "port" (int .Values.ports.grpc)
    "health_port" (int .Values.ports.health)
    "metrics_port" (int .Values.ports.metrics)
    "workers" (int .Values.workers)
    "grace_period_s" .Values.gracePeriodSeconds
    "drain_delay_s" .Values.drainDelaySeconds -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert" "/etc/modelrouter/tls/tls.crt" "key" "/etc/modelrouter/tls/tls.key" -}}
{{- if .Values.tls.clientAuth -}}
{{- $_ := set $tls "client_ca" "/etc/modelrouter/tls/ca.crt" -}}
{{- end -}}
{{- $_ := set $server "tls" $tls -}}
{{- end -}}
{{- $_ := set $config "server" (mergeOverwrite (default (dict) $config.server) $server) -}}
{{- if .Values.auth.enabled -}}
{{- $keys := list -}}
{{- range $i, $key := .Values.auth.keys -}}
{{- $keys = append $keys (dict "sha256" (printf "${MODELROUTER_AUTH_KEY_%d_SHA256}" $i) "tenant" $key.tenant "methods" $key.methods) -}}
{{- end -}}
{{- $_ := set $config "auth" (dict "enabled" true "protect_health" .Values.auth.protectHealth "keys" $keys) -}}
{{- end -}}
{{- if .Values.redis.url -}}
{{- $limits := mergeOverwrite (default (dict) $config.limits) (dict "redis_url" "${MODELROUTER_REDIS_URL}" "on_redis_error" .Values.redis.onError) -}}
{{- $_ := set $config "limits" $limits -}}
{{- end -}}
{{- if .Values.postgresql.url -}}
{{- $store := mergeOverwrite (default (dict) $config.store) (dict "url" "${MODELROUTER_STORE_URL}") -}}
{{- $_ := set $config "store" $store -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
