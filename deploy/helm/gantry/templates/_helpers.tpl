{{- define "gantry.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gantry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gantry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gantry.secretName" -}}
{{- .Values.connection.existingSecret | default (printf "%s-connection" (include "gantry.fullname" .)) -}}
{{- end -}}

{{- define "gantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "gantry.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "gantry.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Name of a service's objects: <fullname>-<service>. */}}
{{- define "gantry.componentName" -}}
{{- printf "%s-%s" (include "gantry.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gantry.pipelinesConfigMap" -}}
{{- .Values.pipelines.existingConfigMap | default (printf "%s-pipelines" (include "gantry.fullname" .)) -}}
{{- end -}}

{{/*
What the chart refuses to render without, all named in one message:
API tokens unless allowAnonymous (authentication by default, DESIGN.md 1.7),
pipelines (no silent example pipelines in production), and the connection
URLs. Every template that needs them includes this first.
*/}}
{{- define "gantry.validate" -}}
{{- $missing := list -}}
{{- if not (or .Values.apiTokens.existingSecret .Values.allowAnonymous) -}}
{{- $missing = append $missing "API tokens: set apiTokens.existingSecret to a Secret holding the hashed API tokens (key tokens.yaml: `tokens: [{user, email, groups, sha256}]`, sha256 = `printf %s \"$TOKEN\" | sha256sum`; kubectl create secret generic gantry-api-tokens --from-file=tokens.yaml), or set allowAnonymous=true to serve the API and webhooks without authentication" -}}
{{- end -}}
{{- if not (or .Values.pipelines.existingConfigMap .Values.pipelines.files) -}}
{{- $missing = append $missing "pipelines: set pipelines.existingConfigMap to a ConfigMap holding your pipeline files (kubectl create configmap gantry-pipelines --from-file=pipelines/), or give them inline with pipelines.files (--set-file pipelines.files.banking\\.yaml=pipelines/banking.yaml); the chart never falls back to the image's example pipelines" -}}
{{- end -}}
{{- if not .Values.connection.existingSecret -}}
{{- if not .Values.connection.databaseUrl -}}
{{- $missing = append $missing "connection: set connection.databaseUrl (postgres://...) or connection.existingSecret" -}}
{{- end -}}
{{- if not .Values.connection.natsUrl -}}
{{- $missing = append $missing "connection: set connection.natsUrl (nats://... or tls://...) or connection.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "\n- %s" (join "\n- " $missing)) -}}
{{- end -}}
{{- end -}}

{{/* Services that serve the API or webhooks and so need API tokens. */}}
{{- define "gantry.servesHttp" -}}
{{- if has . (list "api" "webhook") -}}true{{- end -}}
{{- end -}}

{{/* Environment every gantry process gets (services and the prune job). */}}
{{- define "gantry.commonEnv" -}}
- name: GANTRY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "gantry.secretName" . }}
      key: {{ .Values.connection.databaseUrlKey }}
- name: GANTRY_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "gantry.secretName" . }}
      key: {{ .Values.connection.natsUrlKey }}
- name: GANTRY_NATS_PREFIX
  value: {{ .Values.nats.prefix | quote }}
- name: GANTRY_NATS_STREAM
  value: {{ .Values.nats.stream | quote }}
- name: GANTRY_PACKAGES_BUCKET
  value: {{ .Values.packages.bucket | quote }}
{{- with .Values.publicUrl }}
- name: GANTRY_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.packages.maxBytes }}
- name: GANTRY_PACKAGES_MAX_BYTES
  value: {{ . | quote }}
{{- end }}
{{- with .Values.database.pool }}
- name: GANTRY_DATABASE_POOL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.replicas }}
- name: GANTRY_NATS_REPLICAS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.maxAge }}
- name: GANTRY_NATS_MAX_AGE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.maxBytes }}
- name: GANTRY_NATS_MAX_BYTES
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.credsFile }}
- name: GANTRY_NATS_CREDS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.nkeyFile }}
- name: GANTRY_NATS_NKEY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.caFile }}
- name: GANTRY_NATS_CA
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.certFile }}
- name: GANTRY_NATS_CERT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.nats.keyFile }}
- name: GANTRY_NATS_KEY
  value: {{ . | quote }}
{{- end }}
- name: GANTRY_PIPELINES
  value: /etc/gantry/pipelines
- name: GANTRY_DATA_DIR
  value: /var/lib/gantry
- name: HOME
  value: /var/lib/gantry
- name: GANTRY_LOG
  value: {{ .Values.log.filter | quote }}
- name: GANTRY_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- end -}}
