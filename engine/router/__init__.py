"""The cache-aware router: policies, cost model, global prefix view, HTTP front door."""
