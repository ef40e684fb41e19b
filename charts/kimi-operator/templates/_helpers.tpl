{{/*
Helpers of the kimi-operator chart. Every name is prefixed with the chart name.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "kimi-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart name. */}}
{{- define "kimi-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version label value */}}
{{- define "kimi-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "kimi-operator.labels" -}}
helm.sh/chart: {{ include "kimi-operator.chart" . }}
{{ include "kimi-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kimi-operator
{{- end }}

{{/* Labels that select the operator pods (immutable in a Deployment: never add to them). */}}
{{- define "kimi-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kimi-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "kimi-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kimi-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */}}
{{- define "kimi-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the leader election Lease. */}}
{{- define "kimi-operator.leaseName" -}}
{{- default (include "kimi-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Fail early on combinations that cannot work. */}}
{{- define "kimi-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would reconcile every KimiDeployment" }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced objects the operator reads and writes (server-side apply = PATCH with the
field manager kimi-operator). Used by the ClusterRole, or by a Role per watched namespace.
*/}}
{{- define "kimi-operator.namespacedRules" -}}
- apiGroups: ["kimi-operator.dev"]
  resources: ["kimideployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kimi-operator.dev"]
  resources: ["kimideployments/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The weights fetch pod prints its progress to its log, and a starting engine its startup lines (until it is Ready);
# the operator reads bounded tails (the fetch pod has no API access).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- /* The gateway: its ServiceAccount, a Role granting pods get/list/watch (which the operator holds itself, so
no bind or escalate verb is needed) and its RoleBinding; the engines' NetworkPolicy. Watched like every child:
the read cache is fed by the watches, and an edit by hand is restored. */}}
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- if .Values.rbac.readApiKeySecrets }}
{{- /* spec.auth.apiKeySecretRef: the operator gets that one Secret by name (it never lists or watches Secrets)
for a fingerprint of the key, so that a new key rolls the gateway and engine pods (neither re-reads it). */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}
