"""``gateway demo``: a sample deployERP-shaped upstream and the gateway in front of it."""
