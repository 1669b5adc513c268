{{/* Labels every object carries; mirrors internal/install's labels(). */}}
{{- define "backbone.labels" -}}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/name: backbone
app.kubernetes.io/part-of: backbone
{{- end }}

{{- define "backbone.selectorLabels" -}}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/name: backbone
{{- end }}

{{- define "backbone.clusterName" -}}
{{- required "clusterName is required: mirrors and the gateway identity are named after it" .Values.clusterName -}}
{{- end }}

{{- define "backbone.identity" -}}
spiffe://{{ .Values.trustDomain }}/cluster/{{ include "backbone.clusterName" . }}
{{- end }}

{{/* The container both Deployments run; the caller passes a dict. */}}
{{- define "backbone.container" -}}
- name: {{ .name }}
  image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args:
  {{- toYaml .args | nindent 2 }}
  env:
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  ports:
  {{- with .ports }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  - name: admin
    containerPort: 9090
    protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
  resources:
    requests:
      cpu: {{ .resources.cpuRequest | quote }}
      memory: {{ .resources.memoryRequest | quote }}
    limits:
      memory: {{ .resources.memoryLimit | quote }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
  {{- with .volumeMounts }}
  volumeMounts:
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "backbone.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The gateway identity volume: the Secret, or with a trust bundle
ConfigMap a projected volume taking ca.crt from it. */}}
{{- define "backbone.identityVolume" -}}
- name: identity
{{- if .Values.gateway.trustBundle.configMap }}
  projected:
    defaultMode: 0440
    sources:
    - secret:
        name: {{ .Values.gateway.identitySecret }}
        items:
        - key: tls.crt
          path: tls.crt
        - key: tls.key
          path: tls.key
    - configMap:
        name: {{ .Values.gateway.trustBundle.configMap }}
        items:
        - key: {{ .Values.gateway.trustBundle.key }}
          path: ca.crt
{{- else }}
  secret:
    secretName: {{ .Values.gateway.identitySecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
