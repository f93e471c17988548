"""``kvstore admin``: operators' view of a node or a cluster."""
