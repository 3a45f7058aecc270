{{/* Common names, labels and the image reference. */}}
{{- define "flywheel.labels" -}}
app.kubernetes.io/part-of: flywheel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "flywheel.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- printf "%s:%s%s" .root.Values.image.repository $tag .suffix -}}
{{- end }}

{{- define "flywheel.operatorLabels" -}}
app.kubernetes.io/name: flywheel-operator
app.kubernetes.io/component: operator
{{- end }}

{{- define "flywheel.agentLabels" -}}
app.kubernetes.io/name: flywheel-agent
app.kubernetes.io/component: node-agent
{{- end }}
