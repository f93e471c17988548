"""Storage tiers: fixed-size slot pools in device memory, host memory and on local disk."""
