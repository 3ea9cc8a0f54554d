"""Penalty methods: every weight moves, pulled back towards θ0 (L1-SP, L2-SP, EWC)."""
