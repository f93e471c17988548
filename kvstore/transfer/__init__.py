"""The transfer engine: moves block bytes between segments of processes and hosts.

segments    named memory regions peers address by (segment, offset, length)
frames      the data plane's wire format
server      a node's data-plane server (reads by key or range, writes, leases)
connection  client connections (blocking sockets on worker threads, recv_into)
transports  the protocol every transport implements, and the types they share
local       same process: memory copies between registered segments
shm         same host: copies straight out of the peer's mapped arena
tcp         other hosts: the data plane over pooled, striped connections
topology    who is where, and which transport and path reach them fastest
engine      the batch, layer-wise API on top
"""
