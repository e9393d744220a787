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
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
Authentication by default (DESIGN.md 1.7): API tokens, or anonymous access
asked for explicitly.
*/}}
{{- define "gantry.requireAuth" -}}
{{- if not (or .Values.apiTokens.existingSecret .Values.allowAnonymous) -}}
{{- fail "set apiTokens.existingSecret to a Secret holding the hashed API tokens (key tokens.yaml: `tokens: [{user, email, groups, sha256}]`, sha256 = `printf %s \"$TOKEN\" | sha256sum`; kubectl create secret generic gantry-api-tokens --from-file=tokens.yaml), or set allowAnonymous=true to serve the API and webhooks without authentication" -}}
{{- end -}}
{{- end -}}

{{/* Services that serve the API or webhooks and so need API tokens. */}}
{{- define "gantry.servesHttp" -}}
{{- if has . (list "api" "webhook") -}}true{{- end -}}
{{- end -}}
