#!/usr/bin/env bash
# Prints the chart's copy of the CRD, charts/dynamo-operator/templates/crd.yaml, from
# crds/dynamocluster.yaml: the same object with Helm's keep annotation (Helm never
# upgrades a chart's crds/ folder, so the CRD is a template; and uninstalling the chart
# must not delete the CRD, which would delete every DynamoCluster) and the chart's labels.
# .ci/static-checks fails when the committed copy differs. Regenerate with
#   bash .ci/chart-crd.sh > charts/dynamo-operator/templates/crd.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

crd=crds/dynamocluster.yaml
if grep -q '{{' "$crd"; then
  echo "chart-crd: $crd contains '{{', which Helm would read as a template" >&2
  exit 1
fi
echo '{{- /* Generated from crds/dynamocluster.yaml by .ci/chart-crd.sh; do not edit. */}}'
echo '{{- if .Values.crds.install }}'
awk '
  { print }
  $0 == "metadata:" && !done {
    print "  annotations:"
    print "    helm.sh/resource-policy: keep"
    print "  labels:"
    print "    {{- include \"dynamo-operator.labels\" . | nindent 4 }}"
    done = 1
  }
  END { if (!done) { print "chart-crd: no top-level metadata: line" > "/dev/stderr"; exit 1 } }
' "$crd"
echo '{{- end }}'
