"""Strata's KV-cache block store: prefix-hashed blocks in HBM, DRAM and NVMe tiers,
served over gRPC to inference engines (see README.md and ARCHITECTURE.md)."""

__version__ = "0.1.0"
