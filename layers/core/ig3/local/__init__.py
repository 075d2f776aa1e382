"""The local cloud: the whole network on one machine, no AWS account, no Docker (`ig3 up`)."""
