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

{{/*
Labels of the routing components (epp, gateway, engines): the same standard labels with their
own component. Call with (dict "ctx" $ "component" "epp").
*/}}
{{- define "block.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "block.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "block.componentLabels" -}}
helm.sh/chart: {{ include "block.chart" .ctx }}
{{ include "block.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: block
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* Names of the routing objects. */}}
{{- define "block.pickerName" -}}
{{- printf "%s-picker" (include "block.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "block.eppName" -}}
{{- printf "%s-epp" (include "block.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "block.gatewayName" -}}
{{- printf "%s-gateway" (include "block.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "block.enginesName" -}}
{{- printf "%s-engines" (include "block.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "block.poolName" -}}
{{- default (include "block.fullname" .) .Values.inferencePool.name }}
{{- end }}

{{/* True (non-empty) when the chart runs an endpoint picker, alone or inside the gateway. */}}
{{- define "block.routing" -}}
{{- if or .Values.epp.enabled .Values.gateway.enabled }}true{{ end }}
{{- end }}

{{/* The engine pods' labels; rendering fails without them where a picker needs them. */}}
{{- define "block.engineSelector" -}}
{{- if not .Values.epp.engineSelector }}
{{- fail "epp.engineSelector must name the labels of your engine pods (epp.enabled or gateway.enabled is set)" }}
{{- end }}
{{- toYaml .Values.epp.engineSelector }}
{{- end }}

{{/*
The picker's routing arguments, shared by `block epp` and `block gateway`: discovery of the
engine pods through the EndpointSlices of the chart's headless engines Service, then the
user's epp.args (last, so they win).
*/}}
{{- define "block.pickerArgs" -}}
- --policy={{ .Values.epp.policy }}
- --discover=k8s
- --namespace={{ .Release.Namespace }}
- --service={{ include "block.enginesName" . }}
- --port-name=http
{{- if .Values.epp.adminToken.secretName }}
- --admin-token-file=/var/run/secrets/block/admin/token
{{- end }}
{{- if .Values.epp.apiKeys.secretName }}
- --api-keys-file=/var/run/secrets/block/api-keys/keys
{{- end }}
{{- range .Values.epp.args }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The picker's Secret volumes and mounts (admin token, API keys), read-only, no subPath (updates
reach the files), readable by the pod's group (fsGroup 10001, mode 0440).
*/}}
{{- define "block.pickerVolumes" -}}
{{- with .Values.epp.adminToken }}{{ if .secretName }}
- name: admin-token
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: token
{{- end }}{{ end }}
{{- with .Values.epp.apiKeys }}{{ if .secretName }}
- name: api-keys
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: keys
{{- end }}{{ end }}
{{- end }}

{{- define "block.pickerVolumeMounts" -}}
{{- if .Values.epp.adminToken.secretName }}
- name: admin-token
  mountPath: /var/run/secrets/block/admin
  readOnly: true
{{- end }}
{{- if .Values.epp.apiKeys.secretName }}
- name: api-keys
  mountPath: /var/run/secrets/block/api-keys
  readOnly: true
{{- end }}
{{- end }}

{{/* What Pod Security's restricted profile asks of a container running Block's image. */}}
{{- define "block.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
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
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each BlockCluster's admin-token Secret, created once (never patched: its token stays) and
# read back by name for the autoscaler's calls to the gateway; the API-key Secret named in a
# spec is looked up by name. No list or watch: no Secret is read that is not named.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The gateways' Role grants this; RBAC lets the operator grant only what it holds itself.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Where the cluster has the Gateway API Inference Extension's CRDs: an InferencePool per
# BlockCluster (its endpoint picker is Block's). The operator finds the API by discovery.
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Warning events on BlockClusters (invalid specs, failures).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
