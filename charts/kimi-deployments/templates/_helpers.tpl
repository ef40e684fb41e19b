{{/* Helpers of the kimi-deployments chart; every name is prefixed with the chart name. */}}

{{- define "kimi-deployments.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every KimiDeployment of the release (the operator's own labels go on its children, not here). */}}
{{- define "kimi-deployments.labels" -}}
helm.sh/chart: {{ include "kimi-deployments.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kimi-operator
{{- end }}

{{/*
Deep merge for specs: maps merge key by key, everything else (lists, scalars) from `over` replaces `base`.
Unlike sprig's mergeOverwrite it keeps an entry's false, 0 and "" over a default.
*/}}
{{- define "kimi-deployments.merge" -}}
{{- $out := deepCopy (.base | default dict) }}
{{- range $key, $value := (.over | default dict) }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $out $key)) }}
{{- $_ := set $out $key (include "kimi-deployments.merge" (dict "base" (get $out $key) "over" $value) | fromYaml) }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}
