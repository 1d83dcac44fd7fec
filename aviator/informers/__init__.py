"""Shared informers: watched, indexed caches of API objects (client-go's tools/cache)."""

from aviator.informers.backoff import Backoff
from aviator.informers.factory import InformerFactory
from aviator.informers.handlers import FuncHandler, ResourceEventHandler
from aviator.informers.keys import (
    DeletedFinalStateUnknown,
    object_key,
    resource_version,
    split_key,
    unwrap_tombstone,
)
from aviator.informers.reflector import Reflector
from aviator.informers.shared_informer import HandlerRegistration, SharedIndexInformer
from aviator.informers.store import NAMESPACE_INDEX, Indexer, IndexFunc, namespace_index

__all__ = [
    "NAMESPACE_INDEX",
    "Backoff",
    "DeletedFinalStateUnknown",
    "FuncHandler",
    "HandlerRegistration",
    "IndexFunc",
    "Indexer",
    "InformerFactory",
    "Reflector",
    "ResourceEventHandler",
    "SharedIndexInformer",
    "namespace_index",
    "object_key",
    "resource_version",
    "split_key",
    "unwrap_tombstone",
]
