"""The BPF C sources, shipped inside the aviator package as `aviator.agent.bpf.src`
(see setup.py); the agent's loader finds them with importlib.resources."""
