"""Clients of the store service: async, sync and cluster-aware.

from kvstore.client import StoreClient, SyncStoreClient, ClusterClient
"""

from kvstore.client.cluster import ClusterClient
from kvstore.client.results import GetResult
from kvstore.client.store_client import Chain, NodePrefix, StoreClient
from kvstore.client.sync import SyncStoreClient

__all__ = ["Chain", "ClusterClient", "GetResult", "NodePrefix", "StoreClient", "SyncStoreClient"]
