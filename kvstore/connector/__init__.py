"""The layer-wise KV connector: how an inference engine's paged KV cache meets the store.

An engine-agnostic client-side library (it imports the store client and the transfer
engine, never an engine). ``layouts`` says where a block's bytes sit in an engine's
cache, ``staging`` gives them host memory, ``backend`` is the store as the connector
sees it (reachable or not), and ``worker`` drives every transfer of a request's KV:
loads before each layer, saves and pushes after it, commit or abort at the end.
"""
