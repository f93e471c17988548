"""The transfer engine: moves block bytes between segments of processes and hosts.

segments    named memory regions peers address by (segment, offset, length)
frames      the data plane's wire format
server      a node's data-plane server (reads by key or range, writes, leases)
connection  client connections (blocking sockets on worker threads, recv_into)
transports  local (same process), shm (same host), tcp (other hosts)
topology    who is where, and which transport and path reach them fastest
engine      the batch, layer-wise API on top
"""
