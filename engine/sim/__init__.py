"""A discrete-event simulator of a Strata cluster, and a capacity planner built on it.

It runs the router's own policy objects (``engine.router``) and the store's own block
index and eviction policies (``kvstore.index``, ``kvstore.policy``) on a simulated clock,
with cost profiles standing in for the GPUs. See ``simulator.py`` for the request path.
"""
