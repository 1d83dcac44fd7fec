{{/*
The namespace every namespaced object goes to.
*/}}
{{- define "aviator.namespace" -}}
{{- .Values.namespace.name -}}
{{- end -}}

{{/*
The recommended labels of one object. Call with (dict "root" $ "name" NAME "component" COMPONENT).
name, component and part-of are those config/ sets on each object; instance, version
and managed-by come from the release, as config/default adds them.
*/}}
{{- define "aviator.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: aviator
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "aviator.controllerLabels" -}}
{{ include "aviator.labels" (dict "root" . "name" "aviator-controller" "component" "controller") }}
{{- end -}}

{{- define "aviator.agentLabels" -}}
{{ include "aviator.labels" (dict "root" . "name" "aviator-agent" "component" "agent") }}
{{- end -}}

{{/*
An image reference from {repository, tag}.
*/}}
{{- define "aviator.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}
