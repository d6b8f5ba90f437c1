"""The "Positions" tab: how the model knows where a token stands (learned, sinusoidal or rotary encodings)."""
