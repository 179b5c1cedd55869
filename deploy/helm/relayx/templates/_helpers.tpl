{{/* Names, labels and the pieces every workload shares. */}}

{{- define "relayx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-relayx, or the release name alone when it already says relayx. */}}
{{- define "relayx.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: relayx.component (dict "root" $ "component" "gateway"). */}}
{{- define "relayx.component" -}}
{{- printf "%s-%s" (include "relayx.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relayx.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "relayx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: relayx.selectorLabels (dict "root" $ "component" "gateway"). */}}
{{- define "relayx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relayx.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "relayx.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "relayx.fullname" .)) -}}
{{- end -}}

{{- define "relayx.configName" -}}
{{- printf "%s-config" (include "relayx.fullname" .) -}}
{{- end -}}

{{- define "relayx.backendImage" -}}
{{- printf "%s:%s" .Values.image.backend.repository (.Values.image.backend.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "relayx.gatewayImage" -}}
{{- printf "%s:%s" .Values.image.gateway.repository (.Values.image.gateway.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Public URLs: from config when set there, else from the Ingress hosts. */}}
{{- define "relayx.publicBaseUrl" -}}
{{- if .Values.config.PUBLIC_BASE_URL -}}
{{- .Values.config.PUBLIC_BASE_URL -}}
{{- else if and .Values.ingress.enabled .Values.ingress.backend.host -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls) .Values.ingress.backend.host -}}
{{- end -}}
{{- end -}}

{{- define "relayx.publicGatewayUrl" -}}
{{- if .Values.config.PUBLIC_GATEWAY_URL -}}
{{- .Values.config.PUBLIC_GATEWAY_URL -}}
{{- else if and .Values.ingress.enabled .Values.ingress.gateway.host -}}
{{- printf "%s://%s" (ternary "wss" "ws" .Values.ingress.tls) .Values.ingress.gateway.host -}}
{{- end -}}
{{- end -}}

{{/* envFrom of every RelayX container: the settings, then the credentials. */}}
{{- define "relayx.envFrom" -}}
- configMapRef:
    name: {{ include "relayx.configName" . }}
- secretRef:
    name: {{ include "relayx.secretName" . }}
{{- end -}}

{{/* Restart the pods when the settings or the credentials change (envFrom is read at start). The
credentials' checksum is over the values, not the rendered Secret, whose generated keys are random
until the Secret exists. */}}
{{- define "relayx.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ toJson .Values.secrets | sha256sum }}
{{- end }}
{{- end -}}
