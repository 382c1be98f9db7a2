{{/* Names: <release>-healthcare-sfu, or the release name when it already says so; at most
42 characters, so the longest object name (…-signaling-internal) stays within 63 and a
StatefulSet's within 52. */}}
{{- define "hc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hc.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "signaling") */}}
{{- define "hc.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hc.image" -}}
{{- $tag := .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- if eq .name "signaling" -}}{{- $tag = .ctx.Values.image.signalingTag | default $tag -}}{{- end -}}
{{- printf "%s/%s:%s" .ctx.Values.image.repository .name $tag -}}
{{- end -}}

{{- define "hc.jwksSecret" -}}
{{- .Values.tokens.jwksSecret.name | default (printf "%s-jwks" (include "hc.fullname" .)) -}}
{{- end -}}
{{- define "hc.auditSigningSecret" -}}
{{- .Values.signaling.audit.signingKeySecret.name | default (printf "%s-audit-signing" (include "hc.fullname" .)) -}}
{{- end -}}
{{- define "hc.clusterSecret" -}}
{{- .Values.cluster.certificatesSecret | default (printf "%s-cluster" (include "hc.fullname" .)) -}}
{{- end -}}
{{- define "hc.clusterSignalingSecret" -}}
{{- .Values.cluster.signalingSecret | default (printf "%s-cluster-signaling" (include "hc.fullname" .)) -}}
{{- end -}}
{{- define "hc.turnSecret" -}}
{{- .Values.turn.secretSecret.name | default (printf "%s-turn" (include "hc.fullname" .)) -}}
{{- end -}}
{{- define "hc.redisSecret" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "hc.fullname" .)) -}}
{{- else -}}
{{- .Values.redis.external.passwordSecret.name -}}
{{- end -}}
{{- end -}}
{{- define "hc.redisSecretKey" -}}
{{- if .Values.redis.enabled -}}password{{- else -}}{{ .Values.redis.external.passwordSecret.key }}{{- end -}}
{{- end -}}

{{/* The audit copy's Redis user: the bundled Redis's `audit`, or the region's (empty: the
store's credentials). */}}
{{- define "hc.redisAuditUser" -}}
{{- if .Values.redis.enabled -}}audit{{- else -}}{{ .Values.redis.external.audit.user }}{{- end -}}
{{- end -}}
{{- define "hc.redisAuditSecret" -}}
{{- if .Values.redis.enabled -}}
{{- include "hc.redisSecret" . -}}
{{- else if .Values.redis.external.audit.user -}}
{{- required "redis.external.audit.passwordSecret.name: the audit user's password Secret" .Values.redis.external.audit.passwordSecret.name -}}
{{- end -}}
{{- end -}}
{{- define "hc.redisAuditSecretKey" -}}
{{- if .Values.redis.enabled -}}audit-password{{- else -}}{{ .Values.redis.external.audit.passwordSecret.key }}{{- end -}}
{{- end -}}

{{/* The Redis URL without its password (scheme://host:port). */}}
{{- define "hc.redisAddress" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379" (include "hc.fullname" .) -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* The pod security context every component shares: non-root, no privilege, default seccomp. */}}
{{- define "hc.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "hc.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}


{{/* The Secret with the signaling replicas' shared secret. */}}
{{- define "hc.replicaSecret" -}}
{{- .Values.signaling.replicaSecret.name | default (printf "%s-replicas" (include "hc.fullname" .)) -}}
{{- end -}}

{{/* The cluster certificate of a pod from cert-manager's CSI driver: dns name, usages. */}}
{{- define "hc.clusterCsiVolume" -}}
{{- $csi := .root.Values.cluster.certManagerCsi -}}
csi:
  driver: csi.cert-manager.io
  readOnly: true
  volumeAttributes:
    csi.cert-manager.io/issuer-name: {{ $csi.issuer.name | quote }}
    csi.cert-manager.io/issuer-kind: {{ $csi.issuer.kind | default "Issuer" | quote }}
    csi.cert-manager.io/issuer-group: {{ $csi.issuer.group | default "cert-manager.io" | quote }}
    csi.cert-manager.io/dns-names: {{ .dnsName | quote }}
    csi.cert-manager.io/key-usages: {{ .usages | quote }}
    csi.cert-manager.io/key-algorithm: ECDSA
    csi.cert-manager.io/key-size: "256"
    csi.cert-manager.io/duration: {{ $csi.duration | default "24h" | quote }}
    csi.cert-manager.io/ca-file: ca.pem
    csi.cert-manager.io/certificate-file: cert.pem
    csi.cert-manager.io/privatekey-file: key.pem
    {{- /* Readable by the services' group (they run as 65532), by nobody else. */}}
    csi.cert-manager.io/fs-group: "65532"
{{- end -}}
