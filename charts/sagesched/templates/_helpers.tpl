{{/* Names, labels and shared snippets. */}}

{{- define "sagesched.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sagesched.fullname" -}}
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

{{/* "<fullname>-<component>", e.g. sagesched-router. Call with (dict "root" $ "component" "router"). */}}
{{- define "sagesched.componentName" -}}
{{- printf "%s-%s" (include "sagesched.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sagesched.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sagesched.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sagesched.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "sagesched.selectorLabels" . }}
app.kubernetes.io/part-of: sagesched
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sagesched.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* ServiceAccount name of a component: (dict "root" $ "component" "router" "sa" .Values.router.serviceAccount) */}}
{{- define "sagesched.serviceAccountName" -}}
{{- if .sa.create -}}
{{- default (include "sagesched.componentName" .) .sa.name -}}
{{- else -}}
{{- default "default" .sa.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the Redis URL, and its key. */}}
{{- define "sagesched.redisSecretName" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret -}}
{{- .Values.externalRedis.existingSecret -}}
{{- else -}}
{{- include "sagesched.componentName" (dict "root" . "component" "redis") -}}
{{- end -}}
{{- end -}}

{{- define "sagesched.redisSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret -}}
{{- .Values.externalRedis.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{- define "sagesched.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc:%d/0" (include "sagesched.componentName" (dict "root" . "component" "redis")) .Release.Namespace (int .Values.redis.port) -}}
{{- else -}}
{{- required "externalRedis.url or externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{/* Environment of the components that use Redis (router, operator): its URL from the Secret. */}}
{{- define "sagesched.commonEnv" -}}
- name: SAGESCHED_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sagesched.redisSecretName" . }}
      key: {{ include "sagesched.redisSecretKey" . }}
{{ include "sagesched.processEnv" . }}
{{- end -}}

{{/* Environment every SageSched container gets: its identity, and writable caches under /tmp. */}}
{{- define "sagesched.processEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{- define "sagesched.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "sagesched.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{- define "sagesched.predictorAddress" -}}
{{- printf "%s.%s.svc:%d" (include "sagesched.componentName" (dict "root" . "component" "predictor")) .Release.Namespace (int .Values.predictor.ports.grpc) -}}
{{- end -}}

{{- /*
  Least privilege for a --standalone kopf operator: read the engine pods it scrapes, reconcile its
  own custom resources (kopf patches finalizers/annotations on the object and writes status through
  the subresource), read InferencePools a policy may reference, and post events. No leases and no
  kopf peering objects: one replica, no peering. No CRD or namespace watching: the CRDs are
  installed before the operator starts (chart crds/).
*/}}
{{- define "sagesched.operatorRules" -}}
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [sagesched.io]
  resources: [sageschedpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [sagesched.io]
  resources: [sageschedpolicies/status]
  verbs: [get, patch]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
