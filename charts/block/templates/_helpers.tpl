{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{- define "block.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "block.fullname" -}}
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

{{- define "block.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "block.selectorLabels" -}}
app.kubernetes.io/name: {{ include "block.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "block.labels" -}}
helm.sh/chart: {{ include "block.chart" . }}
{{ include "block.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: block
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "block.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "block.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "block.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator may do, and no more. It never deletes: the garbage collector removes the
children of a deleted BlockCluster through their owner references.
*/}}
{{- define "block.operatorRules" -}}
# BlockClusters: watch them, keep kopf's annotations, write status; scale is the autoscaler's.
- apiGroups: ["block.dev"]
  resources: ["blockclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["block.dev"]
  resources: ["blockclusters/status", "blockclusters/scale"]
  verbs: ["get", "patch"]
# Owner references that block the owner's deletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["block.dev"]
  resources: ["blockclusters/finalizers"]
  verbs: ["update"]
# The children, by server-side apply (create + patch), watched for drift.
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The gateways' Role grants this; RBAC lets the operator grant only what it holds itself.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Warning events on BlockClusters (invalid specs, failures).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
