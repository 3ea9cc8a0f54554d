"""The survey's additive (prompt and prefix tuning, IA3) and reparameterisation (LoRA, DoRA, AdaLoRA,
VeRA) methods, through peft."""
