"""FitAct pipeline: bounded activations, post-training and bit-flip fault campaigns."""
