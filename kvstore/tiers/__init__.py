"""Storage tiers: device memory, host memory and local disk, each carved by size class."""
