"""Helpers the test tiers share that are not fixtures: ports, and nginx as a foreign receiver."""
