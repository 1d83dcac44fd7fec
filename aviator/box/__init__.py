"""The cluster in a box: a real control plane whose pods are local processes.

`aviator box up` starts kube-apiserver, etcd and kube-controller-manager (the real
ones, from bin/), registers box Nodes, and runs the two things a kubelet and
kube-proxy would do, on loopback: the pod runtime (runtime.py) starts the known
test-app image as a process on the pod's own 127.0.x.y address and keeps the pod's
status honest; the box proxy (proxy.py) gives each Service a local address and
spreads new connections over the ready endpoints of its EndpointSlices.
"""
