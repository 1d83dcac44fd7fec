"""`kubectl aviator`: the kubectl plugin operators use on call (console script
`kubectl-aviator`, krew manifest in plugins/krew/).

- `report.py`: what the commands print, from the objects the API server holds (pure);
- `restore.py`: whether and how to give a taken-over Service its selector back (pure,
  on top of the reconciler's own `restore_patch`);
- `cmd.py`: the command line and the reads and writes (thin).
"""
