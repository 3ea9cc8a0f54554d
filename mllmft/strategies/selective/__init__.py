"""Selective methods: which entries of the weights may move, by a mask (SPIDER, GMT, SPU, HFT,
magnitude and random masks, Model-Dowser)."""
