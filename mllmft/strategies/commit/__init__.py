"""CoMMIT: the balance coefficient κ measured around steps (balance.py), the coordinated learning rates
it drives (learning_rates.py) and the strategy that wraps a base strategy with both (commit.py)."""
