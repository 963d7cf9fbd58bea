"""The first-boot agent shipped into node images (stdlib-only; imports nothing of ours)."""
