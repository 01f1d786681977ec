{{/* The release's object name, at most 63 characters. */}}
{{- define "dynamo-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "dynamo-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-dynamo-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Selector labels of the operator's pods. The name label is fixed: the NetworkPolicy of
every DynamoCluster admits pods labelled app.kubernetes.io/name=dynamo-operator to the
nodes' internode/admin port.
*/}}
{{- define "dynamo-operator.selectorLabels" -}}
app.kubernetes.io/name: dynamo-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dynamo-operator.labels" -}}
{{ include "dynamo-operator.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dynamo
{{- end -}}

{{- define "dynamo-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dynamo-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Where the operator watches: "cluster" (every namespace, a ClusterRole) or "namespace"
(the release's namespace only, a Role). Anything else fails the install.
*/}}
{{- define "dynamo-operator.scope" -}}
{{- if not (has .Values.scope (list "cluster" "namespace")) -}}
{{- fail (printf "scope must be \"cluster\" or \"namespace\", got %q" .Values.scope) -}}
{{- end -}}
{{- .Values.scope -}}
{{- end }}
