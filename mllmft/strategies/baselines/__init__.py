"""The reference points: full fine-tuning of the scope, and the zero-shot model (no training)."""
