{{/* Names and labels. */}}
{{- define "mailfleet.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailfleet.labels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one target: (dict "root" $ "target" "smtp-edge"). */}}
{{- define "mailfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .target }}
{{- end -}}

{{- define "mailfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "mailfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mailfleet.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "mailfleet.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when blobs live on the shared claim (not in S3). A plain http://
endpoint is refused unless allowHttp says so: the server would only fail at
its first blob write.
*/}}
{{- define "mailfleet.blobVolume" -}}
{{- $s3 := .Values.blobs.s3 -}}
{{- if and $s3.endpoint (hasPrefix "http://" $s3.endpoint) (not $s3.allowHttp) -}}
{{- fail "blobs.s3.endpoint is plain http://: set blobs.s3.allowHttp=true (private networks only) or use https://" -}}
{{- end -}}
{{- if and (or $s3.endpoint $s3.existingSecret $s3.region) (not $s3.url) -}}
{{- fail "blobs.s3.endpoint, region and existingSecret need blobs.s3.url (s3://bucket/prefix)" -}}
{{- end -}}
{{- if not $s3.url -}}true{{- end -}}
{{- end -}}

{{- define "mailfleet.blobClaim" -}}
{{- default (printf "%s-blobs" (include "mailfleet.fullname" .)) .Values.blobs.existingClaim -}}
{{- end -}}

{{/*
The targets: values key, target name, client ports as
name:standard:unprivileged, whether it needs the shared blob volume, and
whether it runs a singleton job elected on a Lease (see leaderElection).
*/}}
{{- define "mailfleet.targets" -}}
smtpEdge:
  name: smtp-edge
  ports:
    - {name: smtp, port: 25, high: 2525, key: smtp}
    - {name: submission, port: 587, high: 2587, key: submission}
    - {name: submissions, port: 465, high: 2465, key: submissions}
  blobs: true
  leases: true
filter:
  name: filter
  ports:
    - {name: grpc, port: 7401, high: 7401, key: filter_grpc}
  blobs: false
  leases: false
delivery:
  name: delivery
  ports: []
  blobs: true
  leases: true
mailstore:
  name: mailstore
  ports:
    - {name: grpc, port: 7402, high: 7402, key: mailstore_grpc}
  blobs: true
  leases: true
access:
  name: access
  ports:
    - {name: imap, port: 143, high: 1143, key: imap}
    - {name: imaps, port: 993, high: 1993, key: imaps}
    - {name: pop3, port: 110, high: 1110, key: pop3}
    - {name: pop3s, port: 995, high: 1995, key: pop3s}
  blobs: false
  leases: false
{{- end -}}

{{/* The Lease of each singleton job: <fullname>-<job> (cluster.lease_name_prefix). */}}
{{- define "mailfleet.leaseNames" -}}
{{- $prefix := include "mailfleet.fullname" . -}}
- {{ $prefix }}-history-prune
- {{ $prefix }}-queue-metrics
{{- end -}}

{{/* The port a pod binds for a client port entry. */}}
{{- define "mailfleet.containerPort" -}}
{{- if and .root.Values.bindPrivilegedPorts (lt (int .port.port) 1024) -}}
{{- .port.port -}}
{{- else -}}
{{- .port.high -}}
{{- end -}}
{{- end -}}
