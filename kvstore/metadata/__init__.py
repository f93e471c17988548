"""Cluster metadata: the node registry and the global block index, behind one Protocol."""
