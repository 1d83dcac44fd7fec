"""The kustomize manifests, shipped inside the aviator package as `aviator.config`
(see setup.py): the box applies the namespace, RBAC, CRD and sample policy from there."""
