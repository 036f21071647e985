{{/* Names follow Helm's conventions: release-chart, cut to 63 characters (a DNS label). */}}
{{- define "qvl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qvl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "qvl.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "qvl.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that are not selectors: pod templates add them to their selector labels. */}}
{{- define "qvl.metaLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "qvl.labels" -}}
{{ include "qvl.metaLabels" . }}
app.kubernetes.io/name: {{ include "qvl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The server pods only: the worker's pods carry component=worker and are never selected. */}}
{{- define "qvl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qvl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "qvl.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "qvl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qvl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The worker's pods (its Deployment's selector, the NetworkPolicies' peers). */}}
{{- define "qvl.workerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "qvl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{/* The Secret holding the bearer token. No token, no release: a server anyone who reaches it may
use is never a default, and a token generated here would change on every `helm template`. */}}
{{- define "qvl.tokenSecret" -}}
{{- if .Values.token.existingSecret -}}
{{- .Values.token.existingSecret -}}
{{- else if .Values.token.value -}}
{{- printf "%s-token" (include "qvl.fullname" .) -}}
{{- else -}}
{{- fail "qvl needs a token: create a Secret (kubectl create secret generic qvl-token --from-literal=token=\"$(openssl rand -hex 24)\") and set token.existingSecret=qvl-token, or set token.value" -}}
{{- end -}}
{{- end -}}

{{- define "qvl.probeScheme" -}}
{{- if .Values.tls.secretName }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}
