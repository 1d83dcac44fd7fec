"""The generic controller runtime above informers and the workqueue.

`loop` runs reconciles for queued keys and owns retries, requeues and reconcile
metrics; `writer` is the one metered path for API writes; `events` records Kubernetes
Events. Nothing here knows about AviatorPolicy: that is `aviator.reconcilers`.
"""
