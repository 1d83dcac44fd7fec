"""Leader election on a coordination.k8s.io/v1 Lease (client-go's tools/leaderelection)."""

from aviator.leaderelection.config import LeaderElectionConfig
from aviator.leaderelection.elector import LeaderElector
from aviator.leaderelection.lock import LeaseLock, Lock, LockConflict
from aviator.leaderelection.record import LeaderElectionRecord

__all__ = [
    "LeaderElectionConfig",
    "LeaderElectionRecord",
    "LeaderElector",
    "LeaseLock",
    "Lock",
    "LockConflict",
]
